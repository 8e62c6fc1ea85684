#!/usr/bin/env python3
"""Reads a Hexpulse lake with two independent Delta readers, DuckDB's `delta_scan` and delta-rs's
Python binding (`deltalake`), and prints a JSON report. The lake tests run it; it is also a worked
example of reading the lake from outside (schemas/TABLES.md).

    read_lake.py LAKE_DIR [--versions JSON] [--rows]
        Each table at its newest version, or at the versions of JSON ({"heartbeat": 12, ...}, as an
        epoch manifest's `input_versions`): the version, row count, distinct readings, DuckDB's column
        types and, with --rows, every row's identity sorted (see IDENTITY). Every stored H3 cell is
        checked with Uber's `h3` library under TABLES.md's rule (the finest configured resolution is
        the cell of (lat, lng); coarser columns are its parents). Exit status 1 if the two readers
        disagree, a reading appears twice, a cell breaks the rule, or a table's columns differ from
        TABLES.md.
        The epoch tables (epochs/<table>) are read at their newest versions: rows and epochs.

    read_lake.py LAKE_DIR --watch SECONDS
        Reads every table with both readers again and again for SECONDS (while writers and compactions
        commit), and reports each table's counts per read. Exit status 1 if any read counted a reading
        twice, or a table's count went down between reads.
"""
import argparse
import glob
import json
import os
import sys
import time

import duckdb
import duckdb_extension_delta
import h3
from deltalake import DeltaTable

COMMON = ["event_time", "receive_time", "device_key", "seq", "lat", "lng", "accuracy_m", "asserted_distance_m"]
PROV = ["src_topic", "src_partition", "src_offset", "rules_version"]
EXPECTED = {
    "heartbeat": ["radio", "signal_dbm", "download_mbps", "upload_mbps", "latency_ms"],
    "sensor": ["metric", "value", "unit"],
    "road": ["observation", "heading_deg", "speed_kmh", "confidence"],
}
REJECTED = ["receive_time", "event_time", "device_key", "seq", "kind", "reason", "message", "raw"] + PROV
TABLES = ["heartbeat", "sensor", "road", "rejected"]
# The sealed epochs' outputs, one file per epoch, under epochs/ (schemas/TABLES.md).
EPOCH_TABLES = ["device_summary", "hex_coverage", "sensor_hex_hourly", "road_hex"]
PARTITION_COLUMNS = ("date", "hour")

# What identifies a row: its Kafka record, and in `sensor` (a row per measurement) the metric too.
IDENTITY = {
    "heartbeat": ["src_topic", "src_partition", "src_offset", "seq"],
    "sensor": ["src_topic", "src_partition", "src_offset", "seq", "metric"],
    "road": ["src_topic", "src_partition", "src_offset", "seq"],
    "rejected": ["src_topic", "src_partition", "src_offset", "reason"],
}


def connect():
    """DuckDB with its delta extension, loaded from the `duckdb-extension-delta` wheel (the same signed
    file that `INSTALL delta` downloads from DuckDB's extension host)."""
    con = duckdb.connect()
    ext = os.path.join(
        os.path.dirname(duckdb_extension_delta.__file__),
        "extensions",
        f"v{duckdb.__version__}",
        "delta.duckdb_extension",
    )
    if not os.path.exists(ext):
        found = glob.glob(os.path.join(os.path.dirname(duckdb_extension_delta.__file__), "extensions", "*"))
        sys.exit(f"no delta extension for DuckDB {duckdb.__version__} (found {found}): pin equal versions")
    con.execute(f"LOAD '{ext}'")
    return con


def scan(path, version):
    quoted = path.replace("'", "''")
    at = f", version => {int(version)}" if version is not None else ""
    return f"delta_scan('{quoted}'{at})"


def check_cells(con, src, table, h3cols):
    """Every row's cells against Uber's h3 under TABLES.md's rule: `h3_r{F}` (F, the finest
    resolution) is latLngToCell(lat, lng, F), and every coarser `h3_r{r}` is cellToParent(h3_r{F}, r).
    Returns (mismatches per column, rows whose point lies in another cell at r than the parent)."""
    res = {c: int(c[len("h3_r"):]) for c in h3cols}
    finest = max(res.values())
    bad = {c: 0 for c in h3cols}
    elsewhere = {c: 0 for c in h3cols if res[c] != finest}
    rows = con.execute(f"SELECT lat, lng, {', '.join(h3cols)} FROM {src}").fetchall()
    for lat, lng, *cells in rows:
        fine = h3.latlng_to_cell(lat, lng, finest)
        for c, stored in zip(h3cols, cells):
            if res[c] == finest:
                want = fine
            else:
                want = h3.cell_to_parent(fine, res[c])
                if h3.latlng_to_cell(lat, lng, res[c]) != want:
                    elsewhere[c] += 1
            if stored != h3.str_to_int(want):
                bad[c] += 1
    problems = [f"{table}: {n} of {len(rows)} rows break the H3 rule in {c}" for c, n in bad.items() if n]
    return {"rows": len(rows), "mismatches": bad, "point_cell_is_not_the_parent": elsewhere}, problems


def read_table(con, lake, table, version, with_rows):
    path = os.path.join(lake, table)
    if not os.path.isdir(os.path.join(path, "_delta_log")):
        return {"rows": 0, "duckdb_rows": 0, "distinct": 0}, []
    problems = []
    delta = open_table(path, version)
    arrow = delta.to_pyarrow_table()
    src = scan(path, version)
    rel = con.sql(f"SELECT * FROM {src}")
    cols = [c for c in rel.columns if c not in PARTITION_COLUMNS]
    types = dict(zip(rel.columns, [str(t) for t in rel.types]))
    if table == "rejected":
        want = REJECTED
    else:
        h3cols = [c for c in cols if c.startswith("h3_r")]
        want = COMMON + h3cols + PROV + EXPECTED[table]
        if not h3cols:
            problems.append(f"{table}: no h3_r* columns")
    if cols != want:
        problems.append(f"{table}: columns {cols} != documented {want}")
    ident = ", ".join(IDENTITY[table])
    rows = con.execute(f"SELECT count(*) FROM {src}").fetchone()[0]
    distinct = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {ident} FROM {src})").fetchone()[0]
    if arrow.num_rows != rows:
        problems.append(f"{table}: deltalake reads {arrow.num_rows} rows, DuckDB delta_scan {rows}")
    if distinct != rows:
        problems.append(f"{table}: {rows} rows but {distinct} distinct readings")
    report = {
        "version": delta.version(),
        "rows": rows,
        "deltalake_rows": arrow.num_rows,
        "distinct": distinct,
        "types": types,
    }
    if table != "rejected" and h3cols:
        report["h3"], cell_problems = check_cells(con, src, table, h3cols)
        problems += cell_problems
    # Rows per Delta partition (event date and hour; receive time for `rejected`).
    report["partitions"] = [
        [str(d), h, n]
        for d, h, n in con.execute(f"SELECT date, hour, count(*) FROM {src} GROUP BY ALL ORDER BY ALL").fetchall()
    ]
    if with_rows:
        order = ", ".join(f"{c} NULLS FIRST" for c in IDENTITY[table])
        listed = con.execute(f"SELECT {ident} FROM {src} ORDER BY {order}").fetchall()
        # The same rows through deltalake's Arrow table, sorted the same way by DuckDB.
        other = con.execute(f"SELECT {ident} FROM arrow ORDER BY {order}").fetchall()
        if listed != other:
            problems.append(f"{table}: deltalake and delta_scan list different rows")
        report["identity"] = [list(r) for r in listed]
    return report, problems


def read_epoch_table(con, lake, table):
    path = os.path.join(lake, "epochs", table)
    if not os.path.isdir(os.path.join(path, "_delta_log")):
        return {"rows": 0, "epochs": []}, []
    src = scan(path, None)
    rows = con.execute(f"SELECT count(*) FROM {src}").fetchone()[0]
    epochs = [e for (e,) in con.execute(f"SELECT DISTINCT epoch FROM {src} ORDER BY 1").fetchall()]
    d_rows = open_table(path).to_pyarrow_table().num_rows
    problems = [] if d_rows == rows else [f"epochs/{table}: deltalake reads {d_rows} rows, DuckDB delta_scan {rows}"]
    return {"rows": rows, "deltalake_rows": d_rows, "epochs": epochs}, problems


def snapshot(lake, versions, with_rows):
    con = connect()
    report = {"duckdb": duckdb.__version__, "tables": {}, "epoch_tables": {}, "problems": []}
    for table in TABLES:
        version = None if versions is None else versions.get(table)
        t, problems = read_table(con, lake, table, version, with_rows)
        report["tables"][table] = t
        report["problems"] += problems
    for table in EPOCH_TABLES:
        t, problems = read_epoch_table(con, lake, table)
        report["epoch_tables"][table] = t
        report["problems"] += problems
    return report


def open_table(path, version=None, attempts=5):
    """Opens a table (at its newest version, or at `version`) while writers commit. On a local filesystem a directory
    listing is not a snapshot: ext4 lists in hash order, so a listing that runs while versions N and
    N+1 are created can return N+1 without N. deltalake then refuses the log ("Expected contiguous
    commit files"), and a new listing sees both. Object stores list in key order and cannot show
    that gap."""
    for attempt in range(attempts):
        try:
            return DeltaTable(path, version=version)
        except Exception as e:  # deltalake raises its own error types; only this message is retried
            if "contiguous commit files" not in str(e) or attempt == attempts - 1:
                raise
            print(f"read_lake: {path}: listing raced a commit, listing again ({e})", file=sys.stderr)


def watch(lake, seconds):
    con = connect()
    reads, problems, last = [], [], {}
    until = time.monotonic() + seconds
    while time.monotonic() < until or not reads:
        read = {}
        for table in TABLES:
            path = os.path.join(lake, table)
            if not os.path.isdir(os.path.join(path, "_delta_log")):
                continue
            # One version for both readers: each opens the log once, and a commit may land between.
            version = open_table(path).version()
            src = scan(path, version)
            ident = ", ".join(IDENTITY[table])
            rows, distinct = con.execute(
                f"SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT {ident} FROM {src})) FROM {src}"
            ).fetchone()
            by_deltalake = open_table(path, version).to_pyarrow_table(columns=IDENTITY[table])
            d_rows = by_deltalake.num_rows
            d_distinct = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {ident} FROM by_deltalake)").fetchone()[0]
            read[table] = [version, rows]
            if distinct != rows or d_distinct != d_rows or d_rows != rows:
                problems.append(
                    f"{table}@{version}: delta_scan {rows} rows / {distinct} distinct, "
                    f"deltalake {d_rows} rows / {d_distinct} distinct"
                )
            if rows < last.get(table, 0):
                problems.append(f"{table}@{version}: {rows} rows after {last[table]}")
            last[table] = rows
        reads.append(read)
    return {"duckdb": duckdb.__version__, "reads": len(reads), "last": reads[-1], "problems": problems}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("lake", help="the lake directory (holds heartbeat/, sensor/, road/, rejected/)")
    ap.add_argument("--versions", help='JSON of table versions to read, e.g. {"heartbeat": 12}')
    ap.add_argument("--rows", action="store_true", help="list every row's identity")
    ap.add_argument("--watch", type=float, metavar="SECONDS", help="read again and again for SECONDS")
    args = ap.parse_args()
    if args.watch is not None:
        report = watch(args.lake, args.watch)
    else:
        versions = json.loads(args.versions) if args.versions else None
        report = snapshot(args.lake, versions, args.rows)
    print(json.dumps(report, indent=2, default=str))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
