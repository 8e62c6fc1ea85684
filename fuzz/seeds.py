#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/seeds/<target>/) from the wire test vectors
(schemas/testdata/vectors.json) and the SQL the tests send. Deterministic; run it after the vectors
change: python3 fuzz/seeds.py"""
import gzip
import hashlib
import json
import pathlib
import shutil

ROOT = pathlib.Path(__file__).resolve().parent
VECTORS = json.loads((ROOT.parent / "schemas/testdata/vectors.json").read_text())["vectors"]


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data


def envelope(v):
    out = field(1, bytes.fromhex(v["public_key"])) + field(2, bytes.fromhex(v["payload"]))
    out += field(3, bytes.fromhex(v["signature"]))
    if v.get("payload_format") == "json":
        out += varint(4 << 3) + varint(1)
    return out


def proto_batch(vs):
    return b"".join(field(1, envelope(v)) for v in vs)


def json_batch(vs):
    return json.dumps({"readings": [v["json_item"] for v in vs if "json_item" in v]}).encode()


SQL = [
    "SELECT 1",
    "SELECT count(*) FROM heartbeat",
    "SELECT h3_r8, count(*) AS n FROM heartbeat GROUP BY 1 ORDER BY 2 DESC LIMIT 10",
    "SELECT metric, avg(value) FROM sensor WHERE time >= now() - INTERVAL '1 hour' GROUP BY metric",
    "SELECT * FROM road_hex WHERE devices >= 3",
    "SELECT lat, lng FROM road",
    "WITH r AS (SELECT * FROM road) SELECT count(*) FROM r",
    "SELECT (SELECT max(lat) FROM road) AS x",
    "SELECT device_key FROM heartbeat WHERE device_key IN (SELECT device_key FROM road)",
    "SELECT raw FROM rejected",
    "EXPLAIN SELECT * FROM road",
    "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc'",
    "COPY heartbeat TO '/tmp/x.parquet'",
    "SET datafusion.execution.batch_size = 1",
    "SELECT * FROM '/etc/passwd'",
    "SELECT reason, count(*) FROM rejected GROUP BY reason",
]


# (route index in fuzz_targets/query_params.rs, tail): the parameters and paths the tests send.
QUERY = [
    (0, "res=8&from=2026-11-22T10:00:00Z&to=2026-11-22T12:00:00Z"),
    (0, "zoom=12&bbox=13.3,52.4,13.5,52.6"),
    (1, "res=9&min_neighbours=3"),
    (2, "metric=pm25&res=8"),
    (3, "metric=noise_db&interval=1h&from=1767225600000&to=1767312000000"),
    (4, "res=8"),
    (5, "road/12/2200/1343.mvt"),
    (5, "%72oad/12/2200/1343.mvt"),
    (6, "12/2200/1343.mvt?from=0&to=9223372036854775807"),
    (7, "9223372036854775807/manifest"),
    (8, "format=csv"),
    (9, "00/hexes"),
    (10, "13.3,52.4,13.5,52.6&to=-1"),
    (11, "interval=0s"),
    # Found by the fuzz smoke: an interval ending in a multi-byte character panicked its parser.
    (11, "interval=\u00e6"),
]


def write(target, items):
    d = ROOT / "seeds" / target
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for data in items:
        (d / hashlib.sha1(data).hexdigest()).write_bytes(data)
    print(f"{target}: {len(items)} seeds")


def main():
    proto = [proto_batch([v]) for v in VECTORS] + [proto_batch(VECTORS), b""]
    js = [json_batch([v]) for v in VECTORS if "json_item" in v] + [json_batch(VECTORS)]
    write("batch_protobuf", proto)
    write("batch_json", js)
    mtime0 = dict(mtime=0)
    write("compressed_body", [b"\x00" + gzip.compress(proto_batch(VECTORS), **mtime0),
                              b"\x02" + gzip.compress(json_batch(VECTORS), **mtime0)] +
          [b"\x00" + gzip.compress(proto_batch([v]), **mtime0) for v in VECTORS[:8]])
    sql = [b"\x00" + q.encode() for q in SQL] + [b"\x01" + json.dumps({"sql": q}).encode() for q in SQL[:4]]
    write("sql_request", sql)
    write("query_params", [bytes([i]) + t.encode() for i, t in QUERY])


if __name__ == "__main__":
    main()
