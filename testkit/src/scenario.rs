//! A stream with a known fate for every record: valid readings of each kind and every invalid class
//! the processors detect. Tests produce it to Kafka, run processors, and compare the lake with
//! [`Scenario::expected_valid`] and [`Scenario::expected_rejected`].

use ed25519_dalek::SigningKey;
use hexpulse_common::registry::Device;
use hexpulse_schemas::wire::{
    Heartbeat, Kind, KindName, Location, Measurement, Metric, ObservationType, Reading, Road,
    Sensor, SignedReading,
};
use prost::Message;

use hexpulse_load_tests::fleet::{device_key, offset, sign_reading};

/// Fate of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// A valid reading: its table, device key (hex) and sequence number.
    Valid {
        kind: KindName,
        key: String,
        seq: u64,
    },
    /// Rejected with this reason code.
    Rejected(&'static str),
}

/// One Kafka record of the scenario.
#[derive(Debug, Clone)]
pub struct ScenarioRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub fate: Fate,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub devices: Vec<Device>,
    pub records: Vec<ScenarioRecord>,
}

const BERLIN: (f64, f64) = (52.52, 13.405);
const SEED: u64 = 4242;

/// A reading at `at` (accuracy 5 m), device time `t`.
pub fn reading(seq: u64, t: i64, at: (f64, f64), kind: Kind) -> Reading {
    Reading {
        schema_version: 1,
        device_time_ms: t,
        seq,
        location: Some(Location {
            lat: at.0,
            lng: at.1,
            accuracy_m: 5.0,
        }),
        kind: Some(kind),
    }
}

/// A Wi-Fi heartbeat at -71 dBm, without a speed test.
pub fn heartbeat() -> Kind {
    Kind::Heartbeat(Heartbeat {
        radio: 1,
        signal_dbm: -71.0,
        speed_test: None,
    })
}

fn sensor(pm25: f64) -> Kind {
    Kind::Sensor(Sensor {
        measurements: vec![
            Measurement {
                metric: Metric::Pm25 as i32,
                value: pm25,
            },
            Measurement {
                metric: Metric::NoiseDb as i32,
                value: 51.0,
            },
        ],
    })
}

fn road() -> Kind {
    Kind::Road(Road {
        observation: ObservationType::Pothole as i32,
        heading_deg: 90.0,
        speed_kmh: 36.0,
        confidence: 0.9,
    })
}

struct Builder {
    records: Vec<ScenarioRecord>,
}

impl Builder {
    fn push(&mut self, k: &SigningKey, r: &Reading, fate: Fate) {
        self.push_signed(sign_reading(k, r), fate);
    }
    fn push_signed(&mut self, s: SignedReading, fate: Fate) {
        self.records.push(ScenarioRecord {
            key: s.public_key.to_vec(),
            value: s.encode_to_vec(),
            fate,
        });
    }
    fn valid(&mut self, k: &SigningKey, kind: KindName, r: &Reading) {
        let fate = Fate::Valid {
            kind,
            key: hex::encode(k.verifying_key().as_bytes()),
            seq: r.seq,
        };
        self.push(k, r, fate);
    }
}

/// Builds the scenario around `now_ms` (ingest receive time of every record), with `per_device`
/// valid readings for each of the regular devices.
pub fn build(now_ms: i64, per_device: u64) -> Scenario {
    let hb: Vec<SigningKey> = (0..4).map(|i| device_key(SEED, i)).collect();
    let sn: Vec<SigningKey> = (10..13).map(|i| device_key(SEED, i)).collect();
    let cam: Vec<SigningKey> = (20..23).map(|i| device_key(SEED, i)).collect();
    let rate_dev = device_key(SEED, 30);
    let unknown = device_key(SEED, 99);
    let mut devices = Vec::new();
    let mut register = |k: &SigningKey, kind| {
        devices.push(Device {
            public_key: hex::encode(k.verifying_key().as_bytes()),
            kind,
            lat: BERLIN.0,
            lng: BERLIN.1,
            owner: "scenario".into(),
        })
    };
    hb.iter().for_each(|k| register(k, KindName::Heartbeat));
    sn.iter().for_each(|k| register(k, KindName::Sensor));
    cam.iter().for_each(|k| register(k, KindName::Road));
    register(&rate_dev, KindName::Heartbeat);

    let mut b = Builder {
        records: Vec::new(),
    };
    // Readings one second apart, ending a minute before now.
    let t0 = now_ms - 60_000 - per_device as i64 * 1000;
    for s in 1..=per_device {
        let t = t0 + s as i64 * 1000;
        for k in &hb {
            b.valid(
                k,
                KindName::Heartbeat,
                &reading(
                    s,
                    t,
                    offset(BERLIN.0, BERLIN.1, (s % 7) as f64, 45.0),
                    heartbeat(),
                ),
            );
        }
        for k in &sn {
            b.valid(
                k,
                KindName::Sensor,
                &reading(s, t, BERLIN, sensor(10.0 + s as f64 % 5.0)),
            );
        }
        for (i, k) in cam.iter().enumerate() {
            // 10 m per second (36 km/h), eastwards.
            let at = offset(BERLIN.0 + i as f64 * 0.01, BERLIN.1, s as f64 * 10.0, 90.0);
            b.valid(k, KindName::Road, &reading(s, t, at, road()));
        }
    }
    let next = per_device + 1;
    let t = now_ms - 30_000;
    // An exact replay of a valid record: stored once, the copy is a duplicate.
    let replay = b
        .records
        .iter()
        .find(|r| {
            matches!(
                r.fate,
                Fate::Valid {
                    kind: KindName::Heartbeat,
                    ..
                }
            )
        })
        .cloned()
        .expect("a heartbeat");
    b.records.push(ScenarioRecord {
        fate: Fate::Rejected("duplicate"),
        ..replay
    });
    // Same device and sequence number, different content: also a duplicate.
    b.push(
        &hb[1],
        &reading(1, t, BERLIN, heartbeat()),
        Fate::Rejected("duplicate"),
    );
    // Undecodable record.
    b.records.push(ScenarioRecord {
        key: hb[0].verifying_key().to_bytes().to_vec(),
        value: vec![0xff, 0x01, 0x02],
        fate: Fate::Rejected("malformed"),
    });
    // Bad signature (seen when re-verification is on).
    let mut bad = sign_reading(&hb[2], &reading(next, t, BERLIN, heartbeat()));
    let mut sig = bad.signature.to_vec();
    sig[5] ^= 0x40;
    bad.signature = sig.into();
    b.push_signed(bad, Fate::Rejected("bad_signature"));
    b.push(
        &unknown,
        &reading(1, t, BERLIN, heartbeat()),
        Fate::Rejected("unknown_device"),
    );
    b.push(
        &hb[0],
        &reading(next, t, (0.0, 0.0), heartbeat()),
        Fate::Rejected("location_invalid"),
    );
    b.push(
        &hb[0],
        &reading(next + 1, now_ms + 3_600_000, BERLIN, heartbeat()),
        Fate::Rejected("future_timestamp"),
    );
    b.push(
        &hb[0],
        &reading(next + 2, now_ms - 3 * 3_600_000, BERLIN, heartbeat()),
        Fate::Rejected("late"),
    );
    b.push(
        &sn[0],
        &reading(next, t, BERLIN, sensor(-5.0)),
        Fate::Rejected("value_out_of_range"),
    );
    b.push(
        &hb[3],
        &reading(
            next,
            t,
            offset(BERLIN.0, BERLIN.1, 50_000.0, 0.0),
            heartbeat(),
        ),
        Fate::Rejected("too_far_from_asserted"),
    );
    // A dashcam 100 km from where it was a second ago.
    let last_cam = offset(BERLIN.0, BERLIN.1, per_device as f64 * 10.0, 90.0);
    b.push(
        &cam[0],
        &reading(
            next,
            t0 + per_device as i64 * 1000 + 1000,
            offset(last_cam.0, last_cam.1, 100_000.0, 0.0),
            road(),
        ),
        Fate::Rejected("impossible_speed"),
    );
    // Wrong kind for the registry entry.
    b.push(
        &sn[1],
        &reading(next, t, BERLIN, heartbeat()),
        Fate::Rejected("kind_mismatch"),
    );
    // A kind this version does not know.
    b.push(
        &hb[1],
        &Reading {
            kind: None,
            ..reading(next, t, BERLIN, heartbeat())
        },
        Fate::Rejected("unsupported_kind_or_version"),
    );
    // 125 readings in one rate window of 60 s (limit 120): the last 5 are over the rate.
    let window_start = (now_ms - 10 * 60_000).div_euclid(60_000) * 60_000;
    for s in 1..=125u64 {
        let r = reading(s, window_start + s as i64 * 100, BERLIN, heartbeat());
        if s <= 120 {
            b.valid(&rate_dev, KindName::Heartbeat, &r);
        } else {
            b.push(&rate_dev, &r, Fate::Rejected("rate_exceeded"));
        }
    }
    Scenario {
        devices,
        records: b.records,
    }
}

impl Scenario {
    /// One more valid heartbeat of the scenario's heartbeat device `i` (0 to 3, `devices[i]`):
    /// sequence number `seq` (above the scenario's own, which end at `per_device + 3`), device time
    /// `t`, at the device's place. The devices are the scenario's.
    pub fn heartbeat_of(&self, i: u64, seq: u64, t: i64) -> Scenario {
        assert!(i < 4, "the scenario has four heartbeat devices");
        let k = device_key(SEED, i);
        let mut b = Builder {
            records: Vec::new(),
        };
        b.valid(
            &k,
            KindName::Heartbeat,
            &reading(seq, t, BERLIN, heartbeat()),
        );
        Scenario {
            devices: self.devices.clone(),
            records: b.records,
        }
    }

    /// (kind, device key hex, seq) of every valid reading, sorted.
    pub fn expected_valid(&self) -> Vec<(String, String, u64)> {
        let mut v: Vec<_> = self
            .records
            .iter()
            .filter_map(|r| match &r.fate {
                Fate::Valid { kind, key, seq } => {
                    Some((kind.as_str().to_string(), key.clone(), *seq))
                }
                Fate::Rejected(_) => None,
            })
            .collect();
        v.sort();
        v
    }

    /// (record value, reason) of every rejected record, sorted.
    pub fn expected_rejected(&self) -> Vec<(Vec<u8>, String)> {
        let mut v: Vec<_> = self
            .records
            .iter()
            .filter_map(|r| match &r.fate {
                Fate::Rejected(reason) => Some((r.value.clone(), reason.to_string())),
                Fate::Valid { .. } => None,
            })
            .collect();
        v.sort();
        v
    }
}
