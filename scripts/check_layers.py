#!/usr/bin/env python3
"""The crates' layering (ARCHITECTURE.md, "Code map"), checked from `cargo metadata`:

    schemas <- common <- lake <- ingest / processors / sealer / query <- hexpulse
    schemas <- rewards <- lake

A crate's normal (and build) dependencies on workspace crates may only point down these layers: the
role crates (ingest, processors, sealer, query) never depend on each other, and the test kit (`testkit`) is
only ever a dev-dependency. Dev-dependencies are free otherwise: a role's tests may run another role
(query's tests fill the lake with the processors). `make lint` and `make test` run it.

Usage: check_layers.py [METADATA_JSON]   (without it, runs `cargo metadata --no-deps`)
       check_layers.py --self-test           (the check finds violations planted in the real metadata)
"""

import json
import subprocess
import sys

# Each workspace crate and the workspace crates its normal dependencies may name.
ALLOWED = {
    "hexpulse-schemas": set(),
    "hexpulse-common": {"hexpulse-schemas"},
    # Pure reward logic (points, Merkle tree, proofs): what a reward oracle's verifier depends on.
    "hexpulse-rewards": {"hexpulse-schemas"},
    "hexpulse-lake": {"hexpulse-schemas", "hexpulse-common", "hexpulse-rewards"},
    "hexpulse-ingest": {"hexpulse-schemas", "hexpulse-common"},
    "hexpulse-processors": {"hexpulse-schemas", "hexpulse-common", "hexpulse-lake"},
    "hexpulse-sealer": {"hexpulse-common", "hexpulse-lake"},
    "hexpulse-query": {"hexpulse-schemas", "hexpulse-common", "hexpulse-lake"},
    # The simulator and benchmarks' library: device side only (signing, the wire format).
    "hexpulse-load-tests": {"hexpulse-schemas", "hexpulse-common"},
    # Test support for every crate's tests (a dev-dependency only, checked below).
    "hexpulse-testkit": {
        "hexpulse-schemas",
        "hexpulse-common",
        "hexpulse-lake",
        "hexpulse-ingest",
        "hexpulse-processors",
        "hexpulse-query",
        "hexpulse-load-tests",
    },
    # The binary puts the roles together.
    "hexpulse": {
        "hexpulse-schemas",
        "hexpulse-common",
        "hexpulse-lake",
        "hexpulse-ingest",
        "hexpulse-processors",
        "hexpulse-sealer",
        "hexpulse-query",
        "hexpulse-load-tests",
    },
}


def violations(metadata: dict) -> list[str]:
    members = set(metadata["workspace_members"])
    packages = [p for p in metadata["packages"] if p["id"] in members]
    names = {p["name"] for p in packages}
    out = []
    for name in sorted(names - ALLOWED.keys()):
        out.append(f"{name}: a workspace crate this check does not know; give it a layer in {__file__}")
    for p in packages:
        allowed = ALLOWED.get(p["name"], set())
        for d in p["dependencies"]:
            if d["name"] not in names:
                continue
            kind = d["kind"] or "normal"
            if d["name"] == "hexpulse-testkit" and kind != "dev":
                out.append(f'{p["name"]} depends on the test kit as a {kind} dependency (dev only)')
            elif kind != "dev" and d["name"] not in allowed:
                out.append(
                    f'{p["name"]} depends on {d["name"]} ({kind}): it may depend on '
                    f'{", ".join(sorted(allowed)) or "no workspace crate"}'
                )
    return out


def cargo_metadata() -> dict:
    return json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps", "--locked"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )


def self_test() -> int:
    """Plants one violation of each kind into the real metadata: each must be found, alone."""
    plants = [
        ("hexpulse-query", "hexpulse-ingest", None, "hexpulse-query depends on hexpulse-ingest"),
        ("hexpulse-processors", "hexpulse-query", "build", "hexpulse-processors depends on hexpulse-query"),
        ("hexpulse-lake", "hexpulse-testkit", None, "hexpulse-lake depends on the test kit"),
        ("hexpulse-common", "hexpulse-lake", None, "hexpulse-common depends on hexpulse-lake"),
        ("hexpulse-rewards", "hexpulse-common", None, "hexpulse-rewards depends on hexpulse-common"),
    ]
    clean = cargo_metadata()
    assert violations(clean) == [], violations(clean)
    for crate, dep, kind, expected in plants:
        metadata = json.loads(json.dumps(clean))
        package = next(p for p in metadata["packages"] if p["name"] == crate)
        package["dependencies"].append({"name": dep, "kind": kind})
        found = violations(metadata)
        assert len(found) == 1 and found[0].startswith(expected), (crate, dep, found)
        # The same edge as a dev-dependency is allowed (the test kit's too: dev is its place).
        package["dependencies"][-1]["kind"] = "dev"
        assert violations(metadata) == [], (crate, dep, "dev")
    print(f"layering self-test: {len(plants)} planted violations found, their dev-dependency forms allowed")
    return 0


def main() -> int:
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    if len(sys.argv) > 1:
        with open(sys.argv[1]) as f:
            metadata = json.load(f)
    else:
        metadata = cargo_metadata()
    bad = violations(metadata)
    for line in bad:
        print(f"layering: {line}", file=sys.stderr)
    if bad:
        return 1
    print(f"layering: {len(metadata['workspace_members'])} crates, every dependency points down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
