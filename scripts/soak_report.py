#!/usr/bin/env python3
"""Prints a soak's per-minute table (test-output/soak.json, written by hexpulse/tests/it/soak.rs) as
Markdown, the form load-tests/RESULTS.md records runs in: the first minute, every tenth, the last,
the fault minutes and the one with the highest RSS of `up`, then a line of totals and extremes.
`make soak` runs it at the end and keeps its output in test-output/soak.md.

Usage: soak_report.py [SOAK_JSON] [--all]   (--all: every minute)
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    every = "--all" in sys.argv[1:]
    path = Path(args[0]) if args else ROOT / "test-output" / "soak.json"
    report = json.loads(path.read_text())
    minutes = report["minutes"]
    if not minutes:
        print(f"{path}: no minute recorded")
        return 1
    last = len(minutes)
    pick = {1, last} | set(range(10, last + 1, 10))
    pick |= {m["minute"] for m in minutes if m["fault"]}
    pick.add(max(minutes, key=lambda m: m["peak_rss_up_mib"])["minute"])
    print("| minute | accepted | p99 request ms | peak RSS `up` MiB | second processor MiB | kills "
          "| lake MiB | broker MiB | outside consumer read | broker answered | fault |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m in minutes:
        if every or m["minute"] in pick:
            print(f'| {m["minute"]} | {m["accepted"]:,} | {m["p99_ms"]:.1f} | {m["peak_rss_up_mib"]} '
                  f'| {m["peak_rss_processor_mib"]} | {m["processor_kills"]} | {m["lake_mib"]} '
                  f'| {m["broker_mib"]} | {m["outside_consumer_read"]:,} '
                  f'| {"yes" if m["broker_answers"] else "**no**"} '
                  f'| {"broker restart" if m["fault"] else ""} |')
    calm = [m["accepted"] for m in minutes if not m["fault"]] or [0]
    up = [m["peak_rss_up_mib"] for m in minutes]
    print()
    print(f'{last} minutes; {sum(m["accepted"] for m in minutes):,} readings accepted, '
          f'{min(calm):,}–{max(calm):,} a minute outside faults; p99 at most '
          f'{max(m["p99_ms"] for m in minutes):.1f} ms; `up` {min(up)}–{max(up)} MiB, the second processor '
          f'at most {max(m["peak_rss_processor_mib"] for m in minutes)} MiB; '
          f'{sum(m["processor_kills"] for m in minutes)} processor kills; the outside consumer read '
          f'{report["outside_consumer_total"]:,} records; broker started {report["broker_starts"]} times; '
          f'the broker answered {"every minute" if all(m["broker_answers"] for m in minutes) else "**not every minute**"}.')
    acc = report.get("accounting") or {}
    if acc:
        print()
        print(f'Accounting: {acc.get("acknowledged", 0):,} readings acknowledged; '
              f'{acc.get("lake_valid_rows", 0):,} valid and {acc.get("lake_rejected_rows", 0):,} '
              f'rejected rows of the run in the lake, all there {acc.get("settle_s", 0):.0f} s after '
              f'the traffic; **{acc.get("mismatch_total", "?")} mismatches**'
              + (f' ({json.dumps(acc["mismatches"])})' if acc.get("mismatches") else '') + '.')
    return 0


if __name__ == "__main__":
    sys.exit(main())
