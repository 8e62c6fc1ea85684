#!/usr/bin/env python3
"""A device client for Hexpulse ingest over gRPC, built from the published .proto files alone.

It compiles schemas/proto with grpcio-tools (no code of ours is imported), signs readings with
PyNaCl (libsodium's Ed25519) as schemas/WIRE.md says, and sends them with the unary `Submit` and the
streaming `Stream` of `hexpulse.v1.Ingest`.

    pip install grpcio grpcio-tools pynacl
    python3 schemas/examples/grpc_device.py --target 127.0.0.1:8080 \\
        --admin-url http://127.0.0.1:8080 --admin-token "$TOKEN"

registers 5 new heartbeat devices through the admin API (the token `make up` prints) and sends
their readings both ways. `--checks` also runs the door's conformance checks that `make test` runs
(hexpulse/tests/it/grpc.rs): the test vectors' verdicts, every refusal's status, idle and
surplus streams cut off while other clients are served. The result is one JSON document on stdout;
a failed check exits 1.
"""

import argparse
import importlib.resources
import json
import pathlib
import sys
import tempfile
import threading
import time
import urllib.request

import grpc
import nacl.signing
from grpc_tools import protoc

DOMAIN = b"hexpulse/v1/reading\x00"
SCHEMAS = pathlib.Path(__file__).resolve().parents[1]
BERLIN = (52.520008, 13.404954)


def load_stubs(proto_dir):
    """Generates the Python modules of reading.proto and ingest.proto into a temporary directory."""
    out = tempfile.mkdtemp(prefix="hexpulse-grpc-")
    include = str(importlib.resources.files("grpc_tools") / "_proto")
    args = ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}",
            f"--grpc_python_out={out}", "hexpulse/v1/reading.proto", "hexpulse/v1/ingest.proto"]
    if protoc.main(args) != 0:
        sys.exit(f"protoc could not compile {proto_dir}")
    sys.path.insert(0, out)
    from hexpulse.v1 import ingest_pb2, ingest_pb2_grpc, reading_pb2
    return reading_pb2, ingest_pb2, ingest_pb2_grpc


class Device:
    """One device: its Ed25519 key and its sequence numbers."""

    def __init__(self, pb, seed=None):
        self.pb = pb
        self.key = nacl.signing.SigningKey(seed) if seed else nacl.signing.SigningKey.generate()
        self.public = bytes(self.key.verify_key)
        self.seq = 0

    def heartbeat(self):
        pb = self.pb
        self.seq += 1
        reading = pb.Reading(
            schema_version=1,
            device_time_ms=int(time.time() * 1000),
            seq=self.seq,
            location=pb.Location(lat=BERLIN[0], lng=BERLIN[1], accuracy_m=5.0),
            heartbeat=pb.Heartbeat(radio=pb.RADIO_TECH_WIFI, signal_dbm=-70.0),
        )
        payload = reading.SerializeToString()
        signature = self.key.sign(DOMAIN + payload).signature
        return pb.SignedReading(public_key=self.public, payload=payload, signature=signature)


def register(admin_url, token, keys):
    """Adds (public key hex, kind) pairs to the registry through ingest's admin API."""
    for key, kind in keys:
        body = json.dumps({"public_key": key, "kind": kind, "lat": BERLIN[0],
                           "lng": BERLIN[1], "owner": "grpc-example"}).encode()
        req = urllib.request.Request(f"{admin_url}/v1/admin/devices", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 201, r.status


def refusal_of(err, ingest_pb2):
    """The `Refusal` a status carries in its `hexpulse-refusal-bin` trailer, and its retry-after."""
    trailers = dict(err.trailing_metadata() or ())
    refusal = None
    if "hexpulse-refusal-bin" in trailers:
        refusal = ingest_pb2.Refusal.FromString(trailers["hexpulse-refusal-bin"])
    return refusal, trailers.get("retry-after")


class Checks:
    def __init__(self):
        self.failed = []
        self.results = {}

    def expect(self, name, ok, detail):
        self.results[name] = {"ok": bool(ok), "detail": detail}
        if not ok:
            self.failed.append(name)
            print(f"FAILED {name}: {detail}", file=sys.stderr)
        else:
            print(f"ok     {name}: {detail}", file=sys.stderr)


def seq_of(pb, item):
    """The sequence number a signed reading carries (in a JSON payload, its document's `seq`)."""
    if item.format == pb.PAYLOAD_FORMAT_JSON:
        return int(json.loads(item.payload)["seq"])
    return pb.Reading.FromString(item.payload).seq


def refused(answer):
    """The refused items of a batch's answer as `; refused [(index, code, message), ...]`, or ''."""
    if not answer.rejected:
        return ""
    return "; refused " + repr([(r.index, r.code, r.message) for r in answer.rejected])


def verdict_of(answer, index):
    for r in answer.rejected:
        if r.index == index:
            return r.code
    return "valid"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="127.0.0.1:8080", help="ingest's host:port")
    ap.add_argument("--admin-url", help="ingest's admin API, to register the devices")
    ap.add_argument("--admin-token", help="the admin bearer token")
    ap.add_argument("--devices", type=int, default=5)
    ap.add_argument("--batches", type=int, default=5, help="unary Submit calls")
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--stream-batches", type=int, default=10, help="batches over one Stream")
    ap.add_argument("--checks", action="store_true", help="run the conformance checks too")
    ap.add_argument("--vectors", default=str(SCHEMAS / "testdata/vectors.json"))
    ap.add_argument("--stream-idle", type=float, default=30.0,
                    help="ingest.grpc.stream_idle of the server, seconds (--checks)")
    ap.add_argument("--streams-per-client", type=int, default=16,
                    help="ingest.grpc.max_streams_per_client of the server (--checks)")
    ap.add_argument("--max-body-bytes", type=int, default=4 << 20,
                    help="ingest.max_body_bytes of the server (--checks)")
    args = ap.parse_args()

    pb, ingest_pb2, ingest_grpc = load_stubs(SCHEMAS / "proto")
    channel = grpc.insecure_channel(args.target, options=[("grpc.max_send_message_length", -1)])
    ingest = ingest_grpc.IngestStub(channel)
    devices = [Device(pb) for _ in range(args.devices)]
    if args.admin_url:
        keys = [(d.public.hex(), "heartbeat") for d in devices]
        if args.checks:
            keys += vector_devices(args.vectors)
        register(args.admin_url, args.admin_token, keys)
        time.sleep(2)  # the processors reload the registry within a second
    checks = Checks()
    accepted = []  # [public key hex, seq] of every reading answered accepted

    def take(batch, answer):
        for i, item in enumerate(batch.readings):
            if verdict_of(answer, i) == "valid":
                accepted.append([item.public_key.hex(), seq_of(pb, item)])

    # Unary batches.
    for _ in range(args.batches):
        batch = pb.ReadingBatch(readings=[devices[i % len(devices)].heartbeat()
                                          for i in range(args.batch_size)])
        answer = ingest.Submit(batch, timeout=30)
        take(batch, answer)
        checks.expect("submit_accepts", answer.accepted == args.batch_size and not answer.rejected,
                      f"accepted {answer.accepted} of {args.batch_size}{refused(answer)}")

    # One stream of batches: one answer per batch, in order.
    sent = [pb.ReadingBatch(readings=[devices[i % len(devices)].heartbeat()
                                      for i in range(args.batch_size)])
            for _ in range(args.stream_batches)]
    answers = list(ingest.Stream(iter(sent), timeout=60))
    order = [a.batch for a in answers]
    checks.expect("stream_answers_in_order", order == list(range(len(sent))), f"answers {order}")
    for batch, a in zip(sent, answers):
        if a.WhichOneof("outcome") == "verdicts":
            take(batch, a.verdicts)
    full = [a.verdicts.accepted for a in answers if a.WhichOneof("outcome") == "verdicts"]
    refusals = "".join(refused(a.verdicts) for a in answers if a.WhichOneof("outcome") == "verdicts")
    checks.expect("stream_accepts", full == [args.batch_size] * len(sent), f"accepted {full}{refusals}")

    vectors = []
    if args.checks:
        vectors = conformance(args, pb, ingest_pb2, ingest, channel, devices, checks, take)
    print(json.dumps({"accepted": accepted, "vectors": vectors, "checks": checks.results,
                      "failed": checks.failed}))
    return 1 if checks.failed else 0


def vector_devices(path):
    """The test vectors' devices with a well-formed key, each of its readings' kind."""
    keys = {}
    for v in json.loads(pathlib.Path(path).read_text())["vectors"]:
        if len(v["public_key"]) != 64 or v["expected"] == "weak_key":
            continue
        reading = v.get("reading") or {}
        kind = next((k for k in ("sensor", "road") if k in reading), "heartbeat")
        keys.setdefault(v["public_key"], kind)
    return sorted(keys.items())


def conformance(args, pb, ingest_pb2, ingest, channel, devices, checks, take):
    # The test vectors, each alone in a batch: the verdict the vector expects.
    vectors = []
    for v in json.loads(pathlib.Path(args.vectors).read_text())["vectors"]:
        item = pb.SignedReading(public_key=bytes.fromhex(v["public_key"]),
                                payload=bytes.fromhex(v["payload"]),
                                signature=bytes.fromhex(v["signature"]),
                                format=pb.PAYLOAD_FORMAT_JSON if v["payload_format"] == "json"
                                else pb.PAYLOAD_FORMAT_PROTOBUF)
        batch = pb.ReadingBatch(readings=[item])
        answer = ingest.Submit(batch, timeout=30)
        got = verdict_of(answer, 0)
        take(batch, answer)
        vectors.append({"name": v["name"], "expected": v["expected"], "got": got})
    wrong = [x for x in vectors if x["expected"] != x["got"]]
    checks.expect("vectors", not wrong, f"{len(vectors)} vectors, wrong: {wrong}")

    raw_submit = channel.unary_unary("/hexpulse.v1.Ingest/Submit")

    def code_of(call):
        try:
            call()
        except grpc.RpcError as e:
            return e
        return None

    # Bytes that are no ReadingBatch: INVALID_ARGUMENT.
    e = code_of(lambda: raw_submit(b"\x0a\xff\xff\xff\x0f", timeout=10))
    refusal = refusal_of(e, ingest_pb2)[0] if e else None
    checks.expect("garbage_is_invalid_argument",
                  e is not None and e.code() == grpc.StatusCode.INVALID_ARGUMENT
                  and refusal is not None and refusal.code == "undecodable_body",
                  f"{e.code() if e else 'accepted'}: {e.details() if e else ''}")

    # A batch from unregistered devices only: UNAUTHENTICATED, with each item's reason.
    strangers = [Device(pb) for _ in range(2)]
    e = code_of(lambda: ingest.Submit(pb.ReadingBatch(readings=[d.heartbeat() for d in strangers]),
                                      timeout=10))
    refusal = refusal_of(e, ingest_pb2)[0] if e else None
    checks.expect("unknown_devices_are_unauthenticated",
                  e is not None and e.code() == grpc.StatusCode.UNAUTHENTICATED
                  and refusal is not None and refusal.code == "unknown_device"
                  and [r.code for r in refusal.rejected] == ["unknown_device"] * 2,
                  f"{e.code() if e else 'accepted'}: {refusal}")

    # A message over max_body_bytes is refused by its length, before it is read.
    e = code_of(lambda: raw_submit(b"\x0a" + b"\x00" * (args.max_body_bytes + 1024), timeout=30))
    checks.expect("oversized_message_is_refused",
                  e is not None and e.code() in (grpc.StatusCode.OUT_OF_RANGE,
                                                 grpc.StatusCode.RESOURCE_EXHAUSTED),
                  f"{e.code() if e else 'accepted'}: {e.details() if e else ''}")

    # The address's rate limit: RESOURCE_EXHAUSTED with a retry delay. Another address (through
    # the trusted proxy's X-Forwarded-For) keeps its own budget.
    hot = (("x-forwarded-for", "10.8.8.8"),)
    limited = None
    for n in range(5000):
        e = code_of(lambda: ingest.Submit(pb.ReadingBatch(), timeout=10, metadata=hot))
        if e is not None:
            limited = (n, e)
            break
    if limited:
        n, e = limited
        refusal, retry = refusal_of(e, ingest_pb2)
        checks.expect("rate_limit_is_resource_exhausted",
                      e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and refusal.code == "rate_limited"
                      and retry is not None and int(retry) >= 1,
                      f"after {n} calls: {e.code()} {refusal.code if refusal else None}, retry-after {retry}")
    else:
        checks.expect("rate_limit_is_resource_exhausted", False, "5000 calls were all answered")
    batch = pb.ReadingBatch(readings=[devices[0].heartbeat()])
    answer = ingest.Submit(batch, timeout=10, metadata=(("x-forwarded-for", "10.1.1.1"),))
    take(batch, answer)
    checks.expect("other_addresses_are_served_meanwhile", answer.accepted == 1,
                  f"accepted {answer.accepted}")

    # A hostile client opens the most streams it may and sends nothing: one more is refused at
    # once, another client's stream is served meanwhile, and the idle streams are cut off.
    hostile = (("x-forwarded-for", "10.6.6.6"),)
    release = threading.Event()

    def silent():
        release.wait()
        return
        yield

    started = time.monotonic()
    idle_calls = [ingest.Stream(silent(), metadata=hostile) for _ in range(args.streams_per_client)]
    time.sleep(0.5)
    extra = ingest.Stream(silent(), metadata=hostile)
    try:
        next(extra)
        extra_code = None
    except grpc.RpcError as e:
        extra_code = e.code()
    checks.expect("streams_past_the_client_cap_are_refused",
                  extra_code == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{extra_code}")
    good = pb.ReadingBatch(readings=[devices[1].heartbeat()])
    served = list(ingest.Stream(iter([good]), timeout=30,
                                metadata=(("x-forwarded-for", "10.1.1.2"),)))
    if served and served[0].WhichOneof("outcome") == "verdicts":
        take(good, served[0].verdicts)
    checks.expect("another_client_is_served_meanwhile",
                  len(served) == 1 and served[0].verdicts.accepted == 1, f"{served}")
    codes = []
    for call in idle_calls:
        try:
            for _ in call:
                pass
            codes.append(None)
        except grpc.RpcError as e:
            codes.append(e.code())
    waited = time.monotonic() - started
    release.set()
    checks.expect("idle_streams_are_cut_off",
                  codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * len(idle_calls)
                  and args.stream_idle * 0.9 <= waited <= args.stream_idle + 15,
                  f"{codes[:3]}... after {waited:.1f} s (stream_idle {args.stream_idle} s)")
    return vectors


if __name__ == "__main__":
    sys.exit(main())
