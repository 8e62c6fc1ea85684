use ed25519_dalek::SigningKey;
use hexpulse_common::registry::{Device, Registry};
use hexpulse_schemas::sign;
use hexpulse_schemas::wire::{
    Heartbeat, Kind, KindName, Location, Measurement, Metric, PayloadFormat, Reading, Sensor,
    SignedReading,
};
use prost::Message;

use super::*;

const T0: i64 = 1_767_225_600_000;

fn key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i; 32])
}

fn setup() -> Validator {
    let devices = vec![
        Device {
            public_key: hex::encode(key(1).verifying_key().as_bytes()),
            kind: KindName::Heartbeat,
            lat: 52.52,
            lng: 13.405,
            owner: "a".into(),
        },
        Device {
            public_key: hex::encode(key(2).verifying_key().as_bytes()),
            kind: KindName::Sensor,
            lat: 52.52,
            lng: 13.405,
            owner: "b".into(),
        },
        Device {
            public_key: hex::encode(key(3).verifying_key().as_bytes()),
            kind: KindName::Road,
            lat: 52.52,
            lng: 13.405,
            owner: "c".into(),
        },
    ];
    Validator::new(
        Rules::load(None).unwrap(),
        Registry::from_devices(devices).unwrap(),
        true,
    )
}

fn encode(k: &SigningKey, r: &Reading) -> Vec<u8> {
    let payload = r.encode_to_vec();
    SignedReading {
        public_key: k.verifying_key().to_bytes().to_vec().into(),
        signature: sign::sign(k, &payload).to_vec().into(),
        payload: payload.into(),
        format: PayloadFormat::Protobuf as i32,
    }
    .encode_to_vec()
}

fn hb(seq: u64, t: i64, lat: f64, lng: f64) -> Reading {
    Reading {
        schema_version: 1,
        device_time_ms: t,
        seq,
        location: Some(Location {
            lat,
            lng,
            accuracy_m: 3.0,
        }),
        kind: Some(Kind::Heartbeat(Heartbeat {
            radio: 1,
            signal_dbm: -70.0,
            speed_test: None,
        })),
    }
}

fn sensor(seq: u64, t: i64, metric: Metric, value: f64) -> Reading {
    Reading {
        kind: Some(Kind::Sensor(Sensor {
            measurements: vec![Measurement {
                metric: metric as i32,
                value,
            }],
        })),
        ..hb(seq, t, 52.52, 13.405)
    }
}

fn verdict(v: &mut Validator, k: u8, r: &Reading, receive: i64) -> String {
    let bytes = encode(&key(k), r);
    match v.validate(RawRecord {
        partition: 0,
        offset: 0,
        value: &bytes,
        receive_ms: receive,
        envelope_problem: None,
    }) {
        Verdict::Valid(_) => "valid".into(),
        Verdict::Rejected { rejection, .. } => rejection.reason.as_str().into(),
    }
}

#[test]
fn each_rule_has_its_reason() {
    let mut v = setup();
    assert_eq!(verdict(&mut v, 1, &hb(1, T0, 52.52, 13.405), T0), "valid");
    assert_eq!(
        verdict(&mut v, 1, &hb(1, T0, 52.52, 13.405), T0 + 5),
        "duplicate"
    );
    assert_eq!(
        verdict(&mut v, 9, &hb(1, T0, 52.52, 13.405), T0),
        "unknown_device"
    );
    assert_eq!(
        verdict(&mut v, 2, &hb(1, T0, 52.52, 13.405), T0),
        "kind_mismatch"
    );
    assert_eq!(
        verdict(&mut v, 1, &hb(2, T0, 0.0, 0.0), T0),
        "location_invalid"
    );
    assert_eq!(
        verdict(&mut v, 1, &hb(3, T0, 95.0, 0.0), T0),
        "location_invalid"
    );
    assert_eq!(
        verdict(&mut v, 1, &hb(4, T0 + 600_000, 52.52, 13.405), T0),
        "future_timestamp"
    );
    assert_eq!(
        verdict(&mut v, 1, &hb(5, T0 - 3 * 3_600_000, 52.52, 13.405), T0),
        "late"
    );
    assert_eq!(
        verdict(&mut v, 1, &hb(6, T0 + 1000, 52.60, 13.405), T0 + 1000),
        "too_far_from_asserted"
    );
    assert_eq!(
        verdict(&mut v, 2, &sensor(1, T0, Metric::Pm25, 12.0), T0),
        "valid"
    );
    assert_eq!(
        verdict(&mut v, 2, &sensor(2, T0 + 1, Metric::Pm25, -3.0), T0),
        "value_out_of_range"
    );
    assert_eq!(
        verdict(
            &mut v,
            2,
            &sensor(3, T0 + 2, Metric::HumidityPct, 130.0),
            T0
        ),
        "value_out_of_range"
    );
    // A sensor 50 km from where it is installed.
    let mut far = sensor(4, T0 + 1000, Metric::Pm25, 10.0);
    far.location = Some(Location {
        lat: 52.97,
        lng: 13.405,
        accuracy_m: 3.0,
    });
    assert_eq!(verdict(&mut v, 2, &far, T0 + 1000), "too_far_from_asserted");
    // Bad signature under re-verification.
    let mut bytes =
        SignedReading::decode(encode(&key(1), &hb(7, T0, 52.52, 13.405)).as_slice()).unwrap();
    let mut sig = bytes.signature.to_vec();
    sig[0] ^= 1;
    bytes.signature = sig.into();
    let raw = bytes.encode_to_vec();
    let got = v.validate(RawRecord {
        partition: 0,
        offset: 0,
        value: &raw,
        receive_ms: T0,
        envelope_problem: None,
    });
    assert!(
        matches!(got, Verdict::Rejected { rejection, .. } if rejection.reason == RejectReason::BadSignature)
    );
    assert!(matches!(
        v.validate(RawRecord {
            partition: 0,
            offset: 0,
            value: b"\xff\xff",
            receive_ms: T0,
            envelope_problem: None,
        }),
        Verdict::Rejected { rejection, .. } if rejection.reason == RejectReason::Malformed
    ));
}

#[test]
fn rate_limit_and_state_rebuild() {
    let mut v = setup();
    let max = v.rules().rate.max_per_window as u64;
    for s in 0..max {
        assert_eq!(
            verdict(&mut v, 1, &hb(s + 1, T0 + s as i64, 52.52, 13.405), T0),
            "valid",
            "reading {s}"
        );
    }
    assert_eq!(
        verdict(&mut v, 1, &hb(max + 1, T0 + max as i64, 52.52, 13.405), T0),
        "rate_exceeded"
    );
    // A rebuilt validator knows the stored readings, and counts each once in its rate window
    // however many rows it has (a sensor reading has one per measurement).
    let mut w = setup();
    let k: [u8; 32] = *key(1).verifying_key().as_bytes();
    for _ in 0..3 {
        w.remember(k, 1, T0, (52.52, 13.405), KindName::Heartbeat);
    }
    for s in 2..=max {
        assert_eq!(
            verdict(&mut w, 1, &hb(s, T0 + s as i64, 52.52, 13.405), T0),
            "valid",
            "reading {s} after a rebuild"
        );
    }
    assert_eq!(
        verdict(&mut w, 1, &hb(1, T0, 52.52, 13.405), T0),
        "duplicate"
    );
    w.prune(T0 + 10 * 3_600_000);
    assert_eq!(w.devices(), 0);
}

/// A dashcam's reading at `t` at (`lat`, 13.405).
fn road_at(seq: u64, t: i64, lat: f64) -> Reading {
    let mut r = hb(seq, t, lat, 13.405);
    r.kind = Some(Kind::Road(hexpulse_schemas::wire::Road {
        observation: hexpulse_schemas::wire::ObservationType::Pothole as i32,
        ..Default::default()
    }));
    r
}

#[test]
fn a_backdated_reading_is_checked_against_its_neighbours_in_time() {
    let mut v = setup();
    let minute = 60_000;
    // A dashcam in Berlin at T0 and still there an hour and a half later.
    assert_eq!(verdict(&mut v, 3, &road_at(1, T0, 52.52), T0), "valid");
    assert_eq!(
        verdict(
            &mut v,
            3,
            &road_at(2, T0 + 90 * minute, 52.52),
            T0 + 90 * minute
        ),
        "valid"
    );
    // Backdated to a minute after T0, 300 km north: 200 km/h against the newest reading alone (under
    // the 250 km/h limit), 18,000 km/h against the reading a minute before it.
    let receive = T0 + 91 * minute;
    assert_eq!(
        verdict(&mut v, 3, &road_at(3, T0 + minute, 55.22), receive),
        "impossible_speed"
    );
    // 109 km north an hour after T0 is plausible against both neighbours: 109 km/h after the
    // reading before it, 218 km/h to the reading after it.
    assert_eq!(
        verdict(&mut v, 3, &road_at(4, T0 + 60 * minute, 53.50), receive),
        "valid"
    );
}

/// Without re-verification a device's registry entry is kept in its state; every change of the
/// registry (kind, asserted location, removal) still decides the next reading.
#[test]
fn a_change_of_the_registry_decides_the_next_reading() {
    let mut v = setup();
    v.reverify = false;
    let registry = v.registry.clone();
    let device = |kind, lat| Device {
        public_key: hex::encode(key(1).verifying_key().as_bytes()),
        kind,
        lat,
        lng: 13.405,
        owner: "a".into(),
    };
    let mut seq = 0;
    let mut next = |v: &mut Validator| {
        seq += 1;
        let t = T0 + seq as i64 * 60_000;
        verdict(v, 1, &hb(seq, t, 52.52, 13.405), t)
    };
    assert_eq!(next(&mut v), "valid");
    assert_eq!(next(&mut v), "valid");
    registry.upsert(device(KindName::Sensor, 52.52)).unwrap();
    assert_eq!(next(&mut v), "kind_mismatch");
    registry.upsert(device(KindName::Heartbeat, 52.52)).unwrap();
    assert_eq!(next(&mut v), "valid");
    registry.upsert(device(KindName::Heartbeat, 53.52)).unwrap();
    assert_eq!(next(&mut v), "too_far_from_asserted");
    registry.upsert(device(KindName::Heartbeat, 52.52)).unwrap();
    assert_eq!(next(&mut v), "valid");
    assert!(registry.remove(key(1).verifying_key().as_bytes()).unwrap());
    assert_eq!(next(&mut v), "unknown_device");
}

/// The cells of a device's point, from its state's last point, equal the binner's.
#[test]
fn cells_of_a_device_equal_the_binners() {
    let mut v = setup();
    let binner = Binner::new(&[12, 8]).unwrap();
    let k = key(1).verifying_key().to_bytes();
    for (seq, (lat, lng)) in [
        (52.52, 13.405),
        (52.52, 13.405),
        (52.5201, 13.4051),
        (52.52, 13.405),
    ]
    .into_iter()
    .enumerate()
    {
        let t = T0 + seq as i64 * 60_000;
        assert_eq!(
            verdict(&mut v, 1, &hb(seq as u64 + 1, t, lat, lng), t),
            "valid"
        );
        assert_eq!(v.cells_of(&binner, &k, lat, lng), binner.cells(lat, lng));
    }
    // A device without state (never accepted) gets the binner's cells too.
    assert_eq!(
        v.cells_of(&binner, &[9; 32], 1.0, 2.0),
        binner.cells(1.0, 2.0)
    );
}
