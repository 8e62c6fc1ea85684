#!/usr/bin/env python3
"""Verify Hexpulse epoch Merkle roots and proofs from schemas/EPOCHS.md alone.

    verify_epoch.py vectors EPOCHS.md            check the test vectors of EPOCHS.md
    verify_epoch.py proof EPOCHS.md PROOF.json [--root HEX]
                                                 check a proof from `hexpulse epoch prove`
                                                 (against the manifest's root, if given)

Only the standard library is used: the leaf columns and the encoding come from EPOCHS.md, so an
oracle can run this (or its own port of it) without reading Hexpulse's code. Exit status 0 when
everything verifies, 1 when anything does not (with the reason on stderr), 2 on bad usage.
"""
import hashlib
import json
import re
import struct
import sys


def fail(msg):
    print(f"verify_epoch: {msg}", file=sys.stderr)
    sys.exit(1)


def leaf_columns(doc):
    """The leaf columns table of EPOCHS.md: [(name, type, nullable)] in leaf order."""
    section = doc.split("### Leaf columns", 1)
    if len(section) != 2:
        fail("EPOCHS.md has no '### Leaf columns' section")
    cols = []
    for line in section[1].splitlines():
        m = re.match(r"^\|\s*(\d+)\s*\|\s*`([a-z0-9_]+)`\s*\|\s*(\w+)\s*\|\s*(yes|no)\s*\|", line)
        if m:
            if int(m.group(1)) != len(cols) + 1:
                fail(f"leaf column {m.group(2)} is out of order")
            cols.append((m.group(2), m.group(3), m.group(4) == "yes"))
        elif cols and not line.startswith("|"):
            break
    if not cols:
        fail("no leaf columns found in EPOCHS.md")
    return cols


def vectors(doc):
    m = re.search(r"## Test vectors.*?```json\n(.*?)\n```", doc, re.S)
    if not m:
        fail("EPOCHS.md has no test vectors block")
    return json.loads(m.group(1))


def encode_row(row, cols):
    out = bytearray()
    for name, typ, nullable in cols:
        if name not in row:
            fail(f"row has no column {name}")
        v = row[name]
        if nullable:
            if v is None:
                out.append(0)
                continue
            out.append(1)
        elif v is None:
            fail(f"column {name} is not nullable")
        if typ == "int64":
            out += struct.pack(">q", v)
        elif typ == "uint64":
            out += struct.pack(">Q", v)
        elif typ == "uint32":
            out += struct.pack(">I", v)
        elif typ == "float64":
            out += struct.pack(">d", float(v))
        elif typ == "utf8":
            b = v.encode("utf-8")
            out += struct.pack(">I", len(b)) + b
        else:
            fail(f"column {name} has type {typ}, which has no encoding")
    return bytes(out)


def leaf(encoded):
    return hashlib.sha256(b"\x00" + encoded).digest()


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def root(leaves):
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = list(leaves)
    while len(level) > 1:
        level = [node(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]
    return level[0]


def fold(acc, path):
    for step in path:
        sib = bytes.fromhex(step["hash"])
        if len(sib) != 32:
            fail("a proof step's hash is not 32 bytes")
        if step["side"] == "left":
            acc = node(sib, acc)
        elif step["side"] == "right":
            acc = node(acc, sib)
        else:
            fail(f"a proof step's side is {step['side']!r}")
    return acc


def check_vectors(doc):
    cols = leaf_columns(doc)
    v = vectors(doc)
    leaves = []
    for i, case in enumerate(v["rows"]):
        enc = encode_row(case["row"], cols)
        if "encoded" in case and case["encoded"] != enc.hex():
            fail(f"row {i}: encoding differs from the vector")
        lf = leaf(enc)
        if case["leaf"] != lf.hex():
            fail(f"row {i}: leaf differs from the vector")
        leaves.append(lf)
    r = root(leaves)
    if v["root"] != r.hex():
        fail("the root differs from the vector")
    for p in v["proofs"]:
        if fold(leaves[p["index"]], p["path"]) != r:
            fail(f"the proof of leaf {p['index']} does not lead to the root")
    if v.get("empty_root") is not None and v["empty_root"] != root([]).hex():
        fail("the root of no leaves differs from the vector")
    print(f"vectors: {len(leaves)} leaves, root {r.hex()}, {len(v['proofs'])} proofs verified")


def check_proof(doc, proof, want_root):
    cols = leaf_columns(doc)
    lf = leaf(encode_row(proof["row"], cols))
    if proof["leaf"] != lf.hex():
        fail("the row does not encode to the proof's leaf")
    r = fold(lf, proof["path"])
    if r.hex() != proof["root"]:
        fail("the path does not lead to the proof's root")
    if want_root is not None and r.hex() != want_root:
        fail("the path does not lead to the manifest's root")
    print(f"proof: device {proof['device_key']} in epoch {proof['epoch']} verified, root {r.hex()}")


def main(argv):
    if len(argv) < 3 or argv[1] not in ("vectors", "proof"):
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[2], encoding="utf-8") as f:
        doc = f.read()
    if argv[1] == "vectors":
        check_vectors(doc)
        return 0
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[3], encoding="utf-8") as f:
        proof = json.load(f)
    want = None
    if len(argv) >= 6 and argv[4] == "--root":
        want = argv[5]
    check_proof(doc, proof, want)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
