#!/usr/bin/env python3
"""Turns the benchmark reports (load-tests/results/*.json, written by `make bench`) into
load-tests/results.json (per stage: value, unit, the limit it is compared to, the ratio, the command)
and the generated table in load-tests/RESULTS.md (between the bench:begin / bench:end markers).

Usage: bench_report.py [--results DIR] [--md FILE] [--json FILE]
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench:begin (scripts/bench_report.py writes this part) -->", "<!-- bench:end -->"
# Container memory limits of the k8s base (k8s/base/*.yaml): what each role's peak RSS is held to.
RSS_LIMITS_MIB = {"ingest": 1024, "process": 2048, "query": 3072}


def machine():
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1]
        mem_gib = round(int(mem) / 2**20)
    except (OSError, StopIteration):
        mem_gib = "?"
    return f"{os.cpu_count()} vCPU {model}, {mem_gib} GiB, {platform.system()} {platform.release()}"


def load(results, name):
    p = results / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def stage(name, value, unit, limit, limit_what, ratio, command, target=None, note=""):
    return {
        "stage": name,
        "value": value,
        "unit": unit,
        "limit": limit,
        "limit_is": limit_what,
        "ratio": ratio,
        "target": target,
        "met": None if target is None or ratio is None else (ratio <= target if target_is_max(name) else ratio >= target),
        "command": command,
        "note": note,
    }


def target_is_max(name):
    return (name.startswith("query") or name.startswith("peak RSS") or name.startswith("device status")
            or name.startswith("freshness"))


def freshness_stages(e2e, what, limit, limit_is, command):
    """Freshness p99 through SQL and through /v1/coverage, each against the issue's limit."""
    rate = f"{e2e['target_rate']:.0f}/s target, {e2e['end_to_end_per_s']:.0f}/s end to end; "
    poll = e2e.get("freshness_poll_p99_ms")
    yield stage(f"freshness p99{what}", round(e2e["freshness_p99_ms"]), "ms from ingest acceptance to visible in query",
                limit, limit_is, e2e["freshness_p99_ms"] / limit, command, target=1.0,
                note=rate + f"p50 {e2e['freshness_p50_ms']:.0f} ms, {e2e['freshness_samples']} probe readings"
                     + (f"; the probe's SQL poll itself took p99 {poll:.0f} ms" if poll is not None else ""))
    if "freshness_coverage_p99_ms" in e2e:
        yield stage(f"freshness p99{what} through /v1/coverage", round(e2e["freshness_coverage_p99_ms"]),
                    "ms from ingest acceptance to counted in the probe's hex", limit, limit_is,
                    e2e["freshness_coverage_p99_ms"] / limit, command, target=1.0,
                    note=f"p50 {e2e['freshness_coverage_p50_ms']:.0f} ms")


def stages(results):
    out = []
    ingest, process, query, e2e, seal = (load(results, n) for n in ("ingest", "process", "query", "e2e", "seal"))
    lakes = [l for l in (load(results, "lake"), load(results, "lake-clean")) if l]
    backends = load(results, "verify-backends")
    if backends and "serial" in backends:
        serial = backends["serial"]
        for build, r in backends.items():
            out.append(stage(f"raw Ed25519 verify, {r['backend']} backend (--cfg curve25519_dalek_backend=\"{build}\")",
                             round(r["single_per_s"]), "single verifies/s, one core", round(serial["single_per_s"]),
                             "the serial backend's single verify (same run)", r["single_per_s"] / serial["single_per_s"],
                             "scripts/bench_verify_backends.sh",
                             note=f"batch of 128 {r['batch128_per_s']:.0f}/s ({r['batch128_per_s'] / serial['batch128_per_s']:.2f}x serial); "
                                  f"ingest's verifier, batches of 200: {r['ingest200_clean_per_s']:.0f}/s"))
    if ingest:
        rv = ingest["raw_verify"]
        # Reports before 2026-12-05 had no fastest_batch_per_s: their yardstick was ed25519-dalek's batch.
        raw = rv.get("fastest_batch_per_s", rv["batch128_per_s"])
        out.append(stage("raw Ed25519 batch verify, one core", round(raw), "verifies/s", None, "reference", None,
                         "hexpulse bench ingest (raw_verify)", note=f"{rv.get('backend', 'unnamed')} backend; the faster of ed25519-dalek's batch of 128 "
                         f"({rv['batch128_per_s']:.0f}/s) and our rule's (ZIP-215; {rv.get('batch128_rule_per_s', float('nan')):.0f}/s); "
                         f"single verify {rv['single_per_s']:.0f}/s (dalek), {rv.get('single_rule_per_s', float('nan')):.0f}/s (our rule)"))
        if "ingest200_bad1pct_planned_per_s" in rv:
            out.append(stage("ingest verifier, 1% bad signatures (two in each batch of 200)",
                             round(rv["ingest200_bad1pct_planned_per_s"]), "verifies/s", round(rv["ingest200_clean_per_s"]),
                             "the same verifier on clean batches of 200 (same run)",
                             rv["ingest200_bad1pct_planned_per_s"] / rv["ingest200_clean_per_s"],
                             "hexpulse bench ingest (raw_verify)",
                             note=f"batch sizes planned from the running share of bad signatures; not expecting them "
                                  f"{rv['ingest200_bad1pct_blind_per_s']:.0f}/s; single verify {rv['single_per_s']:.0f}/s"))
        http = ingest["http"]
        # Reports before 2026-12-05 carried no target: theirs was issue #8's 0.70.
        doors = [("ingest (HTTP)", http, ingest.get("http_target_ratio", 0.70), "per ingest core-second"),
                 ("ingest (gRPC stream)", ingest["grpc"], round(http["ratio_to_raw_batch_verify"], 2),
                  "per ingest core-second; target: HTTP's ratio in this run")]
        if ingest.get("mqtt"):
            doors.append(("ingest (MQTT bridge)", ingest["mqtt"], 0.70,
                          "per core-second of `hexpulse mqtt` (Mosquitto's own CPU not counted)"))
        for name, run, target, what in doors:
            out.append(stage(name, round(run["accepted_per_ingest_core_s"]), "accepted readings " + what.split(";")[0],
                             round(raw), "raw batch verify of one core (same run)", run["ratio_to_raw_batch_verify"],
                             "hexpulse bench ingest --mqtt-broker HOST:PORT", target=target,
                             note=(f"median of {len(run['per_core_rounds'])} rounds (" + ", ".join(f"{x:.0f}" for x in run["per_core_rounds"]) + "); " if run.get("per_core_rounds") else "")
                                  + f"{run['accepted_per_s']:.0f}/s wall, p50 {run['latency_p50_ms']:.0f} ms, "
                                  f"p99 {run['latency_p99_ms']:.0f} ms, {run['non_200']} not answered 200"
                                  + ("; " + what.split("; ")[1] if "; " in what else "")))
    if process:
        # Reports before issue #26 carried no target: theirs was 200k.
        target = process.get("target_rows_per_core_s", 200000)
        out.append(stage("processor", round(process["plain_rows_per_core_s_median"]), "lake rows per processor core-second",
                         round(target), f"the target, {target / 1000:.0f}k rows per core-second (issue #26: 500k)",
                         process["plain_rows_per_core_s_median"] / target,
                         "hexpulse bench process", target=1.0, note="median of three runs, re-verification off"))
        out.append(stage("processor with re-verification", round(process["runs"][-1]["readings_per_core_s"]),
                         "readings per processor core-second",
                         round(process["raw_verify"].get("fastest_batch_per_s", process["raw_verify"]["batch128_per_s"])),
                         "raw batch verify of one core (same run)", process["reverify_ratio_to_raw_batch_verify"],
                         "hexpulse bench process"))
    if e2e:
        # Reports before issue #26 held half of it, as `limit_per_s`.
        one_core = e2e.get("one_core_batch_verify_per_s") or 2 * e2e["limit_per_s"]
        out.append(stage("end to end", round(e2e["end_to_end_per_s"]), "readings/s, simulator to queryable Parquet",
                         round(one_core), "raw batch verify of one core (same run; the higher of before and after)",
                         e2e["end_to_end_per_s"] / one_core, "hexpulse bench e2e", target=e2e.get("target_ratio", 0.75),
                         note=f"{e2e['acknowledged']} readings acknowledged in {e2e['send_s']:.0f} s at a {e2e['target_rate']:.0f}/s target, "
                              f"adversarial share {e2e['adversarial_share']} per class, accounting mismatches {e2e['accounting_mismatches']}"
                              + ("; readings signed before the clock started (--presign)" if e2e.get("presigned") else "")
                              + (f"; raw batch verify {e2e['raw_verify'].get('fastest_batch_per_s', e2e['raw_verify']['batch128_per_s']):.0f}/s before, "
                                 f"{e2e['raw_verify_after'].get('fastest_batch_per_s', e2e['raw_verify_after']['batch128_per_s']):.0f}/s after" if "raw_verify_after" in e2e else "")))
        out.extend(freshness_stages(e2e, "", 2000, "issue #26: 2 s at the full load", "hexpulse bench e2e"))
        half = load(results, "e2e-half")
        if half:
            out.extend(freshness_stages(half, " at half load", 1000, "issue #26: 1 s at half the full load",
                                        "hexpulse bench e2e --rate R/2"))
        for role, b in sorted(e2e["peak_rss_bytes"].items()):
            mib = b / 2**20
            lim = RSS_LIMITS_MIB.get(role)
            out.append(stage(f"peak RSS {role}", round(mib), "MiB (VmHWM) during the end-to-end run",
                             lim, "k8s memory limit" if lim else "none", mib / lim if lim else None,
                             "hexpulse bench e2e", target=1.0 if lim else None,
                             note=f"{e2e['cpu_s'].get(role, 0):.0f} CPU-s in the run"))
    for lk in lakes:
        day = f"{lk['hours']} h, {lk['partitions']} writers, a unit per writer every {lk['unit_secs']} s"
        how = "log cleaned every round" if lk["clean_log"] else "whole log kept"
        if not lk["clean_log"]:
            out.append(stage("Delta commits, one writer after another", round(lk["commits_per_s"]), "commits/s",
                             None, "no limit set", None, "hexpulse bench lake",
                             note=f"p50 {lk['commit_p50_ms']:.2f} ms, p99 {lk['commit_p99_ms']:.2f} ms; {lk['commits']} commits "
                                  f"({day}), {lk['checkpoints']} checkpoints, {lk['compactions']} compactions"))
            out.append(stage("Delta commit latency p99", round(lk["commit_p99_ms"], 2), "ms", None, "no limit set", None,
                             "hexpulse bench lake", note=f"p50 {lk['commit_p50_ms']:.2f} ms"))
        out.append(stage(f"Delta table open after {lk['hours']} simulated hours ({how})", round(lk["open_ms"]), "ms", None,
                         "no limit set", None, "hexpulse bench lake" + (" --clean-log" if lk["clean_log"] else ""),
                         note=f"{lk['log_files']} log files ({lk['log_mb']:.0f} MB), {lk['live_files']} live files; "
                              f"refresh after one more commit {lk['refresh_ms']:.0f} ms; {day}"))
    if seal:
        out.append(stage(f"peak RSS added by sealing {seal['rows'] / 1e6:.0f}M rows", round(seal["seal_growth_mib"]),
                         "MiB (VmHWM while sealing, less the resident size before)", seal["memory_mib"],
                         "seal_memory_bytes (the budget)", seal["growth_per_budget"], "hexpulse bench seal", target=1.0,
                         note=f"{seal['rows_per_s']:.0f} rows/s ({seal['seal_s']:.0f} s), {seal['buckets']} buckets, "
                              f"{seal['spilled_mb']:.0f} MB spilled; {seal['devices']} devices; outputs: "
                              f"{seal['device_summary_rows']} device summaries, {seal['sensor_hex_hourly_rows']} hourly sensor rows"))
    doors = load(results, "doors")
    if doors:
        for d in doors["doors"]:
            # `ipc-over-tcp` is no door but the ceiling of every door over TCP (bench/doors.rs).
            what = "ceiling of any door, Arrow IPC over a bare loopback TCP socket" if d["door"] == "ipc-over-tcp" \
                else f"SQL door {d['door']}"
            out.append(stage(f"{what}: {doors['rows'] / 1e6:g}M rows of sensor", round(d["rows_per_s"]),
                             "rows/s to the client", round(doors["in_process_rows_per_s"]),
                             "DataFusion executing the same statement in-process (same run)", d["ratio_to_in_process"],
                             "hexpulse bench doors", target=0.8 if d["door"].startswith("flight-sql") else None,
                             note=f"{d['client']}; median of {doors['runs']} ("
                                  + ", ".join(f"{s:.2f} s" for s in d["seconds"]) + ")"
                                  + (f"; {d['bytes'] / 1e6:.0f} MB received" if d.get("bytes") else "")))
    status = load(results, "status")
    if status:
        one = status["one_device"]
        out.append(stage(f"device status: one device, {status['lake_devices']:,} devices in the lake", round(one["p99_ms"], 2),
                         "ms p99 (HTTP on loopback)", status["target_p99_ms"], "the issue's limit", round(one["p99_ms"] / status["target_p99_ms"], 3),
                         "hexpulse bench status", target=1.0,
                         note=f"p50 {one['p50_ms']:.2f} ms, max {one['max_ms']:.1f} ms, {one['per_s']:.0f} requests/s from "
                              f"{one['requests']} requests; the cache's first read {status['first_read_s']:.1f} s "
                              f"({status['readings']:,} readings); a city box of {status['city_box_devices']:,} devices "
                              f"p50 {status['city_box']['p50_ms']:.0f} ms"))
    if query:
        for q in query["queries"]:
            out.append(stage(f"query: {q['name']}", round(q["hexpulse_p50_ms"], 1), "ms p50",
                             round(q["duckdb_p50_ms"], 1), f"DuckDB {query.get('duckdb_version', '')} p50, delta_scan of the same Delta tables, same run",
                             q["ratio_p50"], "hexpulse bench query", target=1.0,
                             note=f"p99 {q['hexpulse_p99_ms']:.0f} ms vs {q['duckdb_p99_ms']:.0f} ms; {query['readings']} readings"))
    return out


def fmt(v):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.2f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(ROOT / "load-tests/results"))
    ap.add_argument("--md", default=str(ROOT / "load-tests/RESULTS.md"))
    ap.add_argument("--json", default=str(ROOT / "load-tests/results.json"))
    a = ap.parse_args()
    rows = stages(Path(a.results))
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc = {"machine": machine(), "date": when, "commit": commit, "command": "make bench", "stages": rows}
    Path(a.json).write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        BEGIN,
        f"Machine: {doc['machine']}. Run: {when}, commit {commit}, command `make bench` (scripts/bench.sh; raw JSON in",
        "load-tests/results/*.json, this table and load-tests/results.json by scripts/bench_report.py). Ratios are",
        "value / limit within one run; for query rows and peak RSS lower is better (target ≤ 1), elsewhere higher.",
        "",
        "| stage | value | unit | limit | compared to | ratio | target | met? | command | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = "—" if r["target"] is None else ("≤ " if target_is_max(r["stage"]) else "≥ ") + fmt(r["target"])
        met = "—" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['stage']} | {fmt(r['value'])} | {r['unit']} | {fmt(r['limit'])} | {r['limit_is']} | {fmt(r['ratio'])} | {target} | {met} | `{r['command']}` | {r['note']} |")
    lines.append(END)
    md = Path(a.md)
    text = md.read_text() if md.exists() else "# Benchmark results\n"
    block = "\n".join(lines)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        first_nl = text.index("\n") + 1 if "\n" in text else len(text)
        text = text[:first_nl] + "\n" + block + "\n" + text[first_nl:]
    md.write_text(text)
    print(block)


if __name__ == "__main__":
    main()
