#!/usr/bin/env python3
"""Reads a Hexpulse lake with independent readers and prints a JSON report: each table's Delta
version, row counts, the column names and types DuckDB sees, and distinct (partition, offset) pairs.

    check_lake.py LAKE_DIR

The tables are opened as Delta tables by the `deltalake` package (delta-rs's Python binding), and
DuckDB queries each snapshot's Arrow dataset. (DuckDB's own `delta_scan` needs its delta extension,
which DuckDB downloads from its own extension host; that host is out of reach here.)

Exit status 1 if a table's columns differ from the documented schema (schemas/TABLES.md)."""
import json
import os
import sys

import duckdb
from deltalake import DeltaTable

COMMON = ["event_time", "receive_time", "device_key", "seq", "lat", "lng", "accuracy_m", "asserted_distance_m"]
PROV = ["src_topic", "src_partition", "src_offset", "rules_version"]
EXPECTED = {
    "heartbeat": ["radio", "signal_dbm", "download_mbps", "upload_mbps", "latency_ms"],
    "sensor": ["metric", "value", "unit"],
    "road": ["observation", "heading_deg", "speed_kmh", "confidence"],
}
REJECTED = ["receive_time", "event_time", "device_key", "seq", "kind", "reason", "message", "raw"] + PROV


def main(lake):
    con = duckdb.connect()
    report = {"tables": {}, "problems": []}
    for table in ["heartbeat", "sensor", "road", "rejected"]:
        path = os.path.join(lake, table)
        if not os.path.isdir(os.path.join(path, "_delta_log")):
            report["tables"][table] = {"rows": 0}
            continue
        delta = DeltaTable(path)
        ds = delta.to_pyarrow_dataset()  # noqa: F841 (DuckDB finds it by name)
        rel = con.sql("SELECT * FROM ds")
        cols = [c for c in rel.columns if c not in ("date", "hour")]
        types = dict(zip(rel.columns, [str(t) for t in rel.types]))
        if table == "rejected":
            want = REJECTED
        else:
            h3 = [c for c in cols if c.startswith("h3_r")]
            want = COMMON + h3 + PROV + EXPECTED[table]
            if not h3:
                report["problems"].append(f"{table}: no h3_r* columns")
        if cols != want:
            report["problems"].append(f"{table}: columns {cols} != documented {want}")
        rows = con.execute("SELECT count(*) FROM ds").fetchone()[0]
        distinct = con.execute(
            "SELECT count(*) FROM (SELECT DISTINCT src_partition, src_offset FROM ds)"
        ).fetchone()[0]
        report["tables"][table] = {
            "version": delta.version(),
            "rows": rows,
            "distinct_records": distinct,
            "types": types,
        }
    print(json.dumps(report, indent=2))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
