#!/usr/bin/env python3
"""DuckDB side of `hexpulse bench query`: reads a JSON spec on stdin

    {"runs": N, "tables": {"heartbeat": "/lake/heartbeat", ...}, "queries": [{"name": ..., "sql": ...}]}

defines each table as a view over `delta_scan` of its Delta table (the same snapshot the query
service reads), runs each query once to warm up and N times timed, and prints
{"version": ..., "queries": [{"name", "times_ms", "rows"}]} as JSON."""
import json
import sys
import time

import duckdb

from read_lake import connect, scan


def main():
    spec = json.load(sys.stdin)
    con = connect()
    for table, path in spec["tables"].items():
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM {scan(path, None)}")
    out = []
    for q in spec["queries"]:
        rows = len(con.execute(q["sql"]).fetchall())
        times = []
        for _ in range(spec["runs"]):
            t = time.perf_counter()
            rows = len(con.execute(q["sql"]).fetchall())
            times.append((time.perf_counter() - t) * 1000.0)
        print(f"[duckdb] {q['name']}: {sorted(times)[len(times) // 2]:.1f} ms median, {rows} rows", file=sys.stderr)
        out.append({"name": q["name"], "times_ms": times, "rows": rows})
    json.dump({"version": duckdb.__version__, "queries": out}, sys.stdout)


if __name__ == "__main__":
    main()
