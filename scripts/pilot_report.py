#!/usr/bin/env python3
"""Computes a pilot report's numbers (schemas/PILOTS.md) from a Hexpulse lake with DuckDB alone
(`delta_scan` of the Delta tables), for the pilot test to compare with the query service's report.
It is also a worked example of the report's definitions.

    pilot_report.py LAKE_DIR < SPEC.json

SPEC: {"cells": [H3 cells as integers at resolution 8], "before_from_ms", "start_ms", "end_ms",
"epochs": [sealed epoch ids], "price_per_point_usd"}. Prints the numbers as JSON.
"""
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from read_lake import connect, scan  # noqa: E402

QUALITY = ["download_mbps", "upload_mbps", "latency_ms", "signal_dbm"]
PERCENTILES = [10, 50, 90]


def main():
    lake = sys.argv[1]
    spec = json.load(sys.stdin)
    con = connect()
    heartbeat = scan(os.path.join(lake, "heartbeat"), None)
    cells = ", ".join(str(int(c)) for c in spec["cells"])
    lo, start, end = spec["before_from_ms"], spec["start_ms"], spec["end_ms"]
    rows = f"(SELECT *, epoch_ms(event_time) AS t FROM {heartbeat} WHERE h3_r8 IN ({cells}))"

    def window(a, b):
        pcts = ", ".join(
            f"quantile_cont(CAST({c} AS DOUBLE), {p / 100})" for c in QUALITY for p in PERCENTILES
        )
        r = con.execute(
            f"SELECT count(DISTINCT h3_r8), count(DISTINCT device_key), count(download_mbps), {pcts} "
            f"FROM {rows} WHERE t >= {a} AND t < {b}"
        ).fetchone()
        quality = {}
        for i, c in enumerate(QUALITY):
            quality[c] = {f"p{p}": r[3 + i * 3 + j] for j, p in enumerate(PERCENTILES)}
        return {"cells": r[0], "devices": r[1], "speed_tests": r[2], "quality": quality}

    before, during = window(lo, start), window(start, end)
    dead = con.execute(
        f"SELECT count(*) FROM (SELECT DISTINCT h3_r8 FROM {rows} WHERE t >= {start} AND t < {end} "
        f"EXCEPT SELECT DISTINCT h3_r8 FROM {rows} WHERE t >= {lo} AND t < {start})"
    ).fetchone()[0]
    firsts = [
        r[0]
        for r in con.execute(
            f"SELECT min(t) AS f FROM {rows} WHERE t >= {start} AND t < {end} GROUP BY h3_r8 ORDER BY f"
        ).fetchall()
    ]

    def hours_to(fraction):
        if not firsts:
            return None
        k = max(1, math.ceil(fraction * len(firsts)))
        return (firsts[k - 1] - start) / 3_600_000

    points = 0
    if spec["epochs"]:
        summary = scan(os.path.join(lake, "epochs", "device_summary"), None)
        ids = ", ".join(str(int(e)) for e in spec["epochs"])
        points = con.execute(
            f"SELECT coalesce(sum(reward_points), 0) FROM {summary} WHERE epoch IN ({ids}) AND device_key IN "
            f"(SELECT device_key FROM {rows} WHERE t >= {start} AND t < {end})"
        ).fetchone()[0]
    print(json.dumps({
        "before": before,
        "during": during,
        "dead_to_covered": dead,
        "hours_to_50pct_coverage": hours_to(0.5),
        "hours_to_90pct_coverage": hours_to(0.9),
        "points": int(points),
        "rewards_usd": int(points) * spec["price_per_point_usd"],
    }))


if __name__ == "__main__":
    main()
