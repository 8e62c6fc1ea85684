#!/usr/bin/env python3
"""How much the producers' compression saves on the raw topic (k8s/README.md sizes the brokers on it).

Runs `hexpulse simulate` against a stand-in HTTP endpoint that keeps the bodies, frames every item as
ingest writes it to Kafka (a version 1 envelope around the signed bytes, key = the device's public
key; schemas/WIRE.md "Raw topic records") into Kafka v2 records, groups them by partition in the
order they came, and compresses runs of N records with the lz4 and zstd command-line tools (the
codecs' default levels, as librdkafka uses them).

    scripts/record_compression.py [--bin PATH] [--readings 20000] [--partitions 6]

Prints, per batch size, the record bytes per reading and the compressed share for each codec.
"""

import argparse
import http.server
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import zlib


def read_varint(b, p):
    value, shift = 0, 0
    while True:
        x = b[p]
        p += 1
        value |= (x & 0x7F) << shift
        shift += 7
        if x < 0x80:
            return value, p


def varint(n):
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def zigzag(n):
    return varint((n << 1) ^ (n >> 63))


def fields(msg):
    """The length-delimited fields of a protobuf message: (field number, bytes)."""
    p = 0
    while p < len(msg):
        key, p = read_varint(msg, p)
        wire = key & 7
        if wire == 2:
            n, p = read_varint(msg, p)
            yield key >> 3, msg[p : p + n]
            p += n
        elif wire == 0:
            _, p = read_varint(msg, p)
        elif wire == 1:
            p += 8
        elif wire == 5:
            p += 4
        else:
            raise ValueError(f"wire type {wire}")


def capture(bin_path, readings, out_dir):
    bodies = []

    class Keep(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            answer = b'{"accepted":0,"rejected":[]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Keep)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    print(f"simulating {readings} readings into {url} ...", file=sys.stderr)
    subprocess.run(
        [bin_path, "simulate", "--target-url", url, "--count", str(readings), "--devices",
         "100000", "--batch-size", "200", "--rate", "0"],
        check=True, stdout=subprocess.DEVNULL, cwd=out_dir,
    )
    server.shutdown()
    return bodies


def records(bodies, partitions):
    """Each item as a Kafka v2 record of ingest's, grouped by partition in arrival order."""
    node = b"ingest-0"
    by_partition = {}
    i = 0
    for body in bodies:
        for field, item in fields(body):
            if field != 1:
                continue
            key = next(v for f, v in fields(item) if f == 1)
            received = 1_765_000_000_000 + i // 200
            value = b"\xe1\x01" + struct.pack(">q", received) + bytes([len(node)]) + node + item
            rec = (b"\x00" + zigzag(i % 8) + zigzag(i) + zigzag(len(key)) + key
                   + zigzag(len(value)) + value + zigzag(0))
            by_partition.setdefault(zlib.crc32(key) % partitions, []).append(zigzag(len(rec)) + rec)
            i += 1
    return [r for p in sorted(by_partition) for r in by_partition[p]]


def compressed_size(tool, data):
    return len(subprocess.run([tool, "-q", "-c"], input=data, capture_output=True, check=True).stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cache = os.environ.get("HEXPULSE_CACHE", os.path.expanduser("~/.cache/hexpulse"))
    ap.add_argument("--bin", default=os.path.join(cache, "target/release/hexpulse"))
    ap.add_argument("--readings", type=int, default=20_000)
    ap.add_argument("--partitions", type=int, default=6)
    args = ap.parse_args()
    for tool in ("lz4", "zstd"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (Debian: apt-get install {tool})")
    with tempfile.TemporaryDirectory() as tmp:
        recs = records(capture(args.bin, args.readings, tmp), args.partitions)
        print("| records per batch | bytes per record | lz4 | zstd |")
        print("|---|---|---|---|")
        for n in (30, 100, 500):
            batches = [b"".join(recs[i : i + n]) for i in range(0, len(recs) - n + 1, n)]
            raw = sum(map(len, batches))
            share = {t: sum(compressed_size(t, b) for b in batches) / raw for t in ("lz4", "zstd")}
            print(f"| {n} | {raw / (len(batches) * n):.0f} | {share['lz4']:.2f} | {share['zstd']:.2f} |")


if __name__ == "__main__":
    main()
