#!/usr/bin/env python3
"""Signs sensor readings for Hexpulse as a device does (schemas/WIRE.md), for publishing over MQTT.

Each line it writes is one JSON item, `{"public_key", "signature", "payload_json"}`: the reading as
a JSON document (WIRE.md section 4), signed with Ed25519 over "hexpulse/v1/reading\\0" + its bytes
(PyNaCl, libsodium). `mosquitto_pub -l` publishes a file of them, a line per message:

    pip install pynacl
    python3 schemas/examples/sign_readings.py --devices 3 --readings 20 --out /tmp/readings
    # register the devices of /tmp/readings/devices.json (README "Adding a device"), then:
    for f in /tmp/readings/*.jsonl; do
      mosquitto_pub -q 1 -t "hexpulse/v1/readings/$(basename "$f" .jsonl)" -l < "$f"
    done
    mosquitto_sub -t 'hexpulse/v1/answers/#' -v      # each message's verdict

`--bad` also writes bad.jsonl: messages ingest must refuse, each with its reason.
"""

import argparse
import json
import os
import pathlib
import time

import nacl.signing

DOMAIN = b"hexpulse/v1/reading\x00"
BERLIN = (52.520008, 13.404954)


def signed(key, doc):
    text = json.dumps(doc, separators=(",", ":"))
    signature = key.sign(DOMAIN + text.encode()).signature
    return {"public_key": bytes(key.verify_key).hex(), "signature": signature.hex(),
            "payload_json": text}


def reading(seq, device_time_ms, i):
    return {"schema_version": 1, "device_time_ms": device_time_ms, "seq": seq,
            "location": {"lat": BERLIN[0], "lng": BERLIN[1], "accuracy_m": 5.0},
            "sensor": {"measurements": [{"metric": "pm2_5", "value": 10.0 + i % 7}]}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=3)
    ap.add_argument("--readings", type=int, default=20, help="per device")
    ap.add_argument("--out", required=True, help="directory for devices.json and DEVICE.jsonl")
    ap.add_argument("--bad", action="store_true", help="write bad.jsonl too")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    now_ms = int(time.time() * 1000)
    devices = []
    for d in range(args.devices):
        key = nacl.signing.SigningKey(os.urandom(32))
        public = bytes(key.verify_key).hex()
        devices.append({"public_key": public, "kind": "sensor", "lat": BERLIN[0],
                        "lng": BERLIN[1], "owner": "mqtt-example"})
        with open(out / f"{public}.jsonl", "w") as f:
            for i in range(args.readings):
                # Sequence numbers from the clock, as WIRE.md advises: never reused across runs.
                # One reading a second, the newest now (the rules allow 120 a minute).
                taken = now_ms - (args.readings - i) * 1000
                f.write(json.dumps(signed(key, reading(now_ms + i, taken, i))) + "\n")
        if d == 0 and args.bad:
            forged = signed(key, reading(now_ms + args.readings + 1, now_ms, 0))
            forged["payload_json"] = forged["payload_json"].replace("10.0", "99.0")
            stranger = signed(nacl.signing.SigningKey(os.urandom(32)), reading(1, now_ms, 0))
            with open(out / "bad.jsonl", "w") as f:
                f.write(json.dumps({"expect": "bad_signature", "message": forged}) + "\n")
                f.write(json.dumps({"expect": "unknown_device", "message": stranger}) + "\n")
                f.write(json.dumps({"expect": "undecodable_body", "message": "{not json"}) + "\n")
    (out / "devices.json").write_text(json.dumps(devices, indent=1))
    print(json.dumps({"devices": len(devices), "readings": len(devices) * args.readings,
                      "out": str(out)}))


if __name__ == "__main__":
    main()
