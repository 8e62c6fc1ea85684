//! The adversarial mix: readings (and whole requests) that must be refused, each with the fate the
//! pipeline owes it, and the [`Ledger`] that records what was sent and what ingest answered, for
//! [`crate::account`] to compare with the lake.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use hexpulse_schemas::wire::{Kind, KindName, ReadingBatch, SignedReading};
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::fleet::{Fleet, device_key, offset, sign_reading};

/// `[simulate.adversarial]`: the share of each class. Reading classes are shares of readings;
/// `malformed_body` and `oversize_body` are shares of requests. Zero everywhere by default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Adversarial {
    /// A valid reading whose signature has one bit flipped.
    pub bad_signature: f64,
    /// A reading of one device signed with another registered device's key.
    pub other_key: f64,
    /// A well-signed reading of a device the registry does not know.
    pub unknown_device: f64,
    /// An exact copy of an earlier valid reading, sent again.
    pub replay: f64,
    /// A device clock an hour ahead.
    pub future: f64,
    /// A reading three hours old (past the allowed lateness).
    pub stale: f64,
    /// A hotspot claiming to be 50 km from its asserted location.
    pub teleport: f64,
    /// A sensor reporting a negative particulate concentration.
    pub out_of_range: f64,
    /// A request whose body does not decode.
    pub malformed_body: f64,
    /// A request larger than ingest's `max_body_bytes`.
    pub oversize_body: f64,
}

impl Adversarial {
    /// Every class at the same share.
    pub fn uniform(share: f64) -> Adversarial {
        Adversarial {
            bad_signature: share,
            other_key: share,
            unknown_device: share,
            replay: share,
            future: share,
            stale: share,
            teleport: share,
            out_of_range: share,
            malformed_body: share,
            oversize_body: share,
        }
    }

    fn reading_shares(&self) -> [(Class, f64); 8] {
        [
            (Class::BadSignature, self.bad_signature),
            (Class::OtherKey, self.other_key),
            (Class::UnknownDevice, self.unknown_device),
            (Class::Replay, self.replay),
            (Class::Future, self.future),
            (Class::Stale, self.stale),
            (Class::Teleport, self.teleport),
            (Class::OutOfRange, self.out_of_range),
        ]
    }

    pub fn is_zero(&self) -> bool {
        self.reading_shares().iter().all(|(_, s)| *s <= 0.0)
            && self.malformed_body <= 0.0
            && self.oversize_body <= 0.0
    }
}

/// What a sent reading is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Valid,
    BadSignature,
    OtherKey,
    UnknownDevice,
    Replay,
    Future,
    Stale,
    Teleport,
    OutOfRange,
    MalformedBody,
    OversizeBody,
}

/// Where a reading of a class must end up, once ingest accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Exactly once in its kind's table (replays: one copy of all identical copies).
    Valid,
    /// Refused by ingest with this item code; never in the lake.
    IngestRejects(&'static str),
    /// In the rejected table with this reason.
    LakeRejects(&'static str),
    /// The whole request refused with this status; never in the lake.
    RequestRefused(u16),
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Valid => "valid",
            Class::BadSignature => "bad_signature",
            Class::OtherKey => "other_key",
            Class::UnknownDevice => "unknown_device",
            Class::Replay => "replay",
            Class::Future => "future",
            Class::Stale => "stale",
            Class::Teleport => "teleport",
            Class::OutOfRange => "out_of_range",
            Class::MalformedBody => "malformed_body",
            Class::OversizeBody => "oversize_body",
        }
    }

    pub fn expected(self) -> Expected {
        match self {
            Class::Valid | Class::Replay => Expected::Valid,
            Class::BadSignature | Class::OtherKey => Expected::IngestRejects("bad_signature"),
            Class::UnknownDevice => Expected::IngestRejects("unknown_device"),
            Class::Future => Expected::LakeRejects("future_timestamp"),
            Class::Stale => Expected::LakeRejects("late"),
            Class::Teleport => Expected::LakeRejects("too_far_from_asserted"),
            Class::OutOfRange => Expected::LakeRejects("value_out_of_range"),
            Class::MalformedBody => Expected::RequestRefused(400),
            Class::OversizeBody => Expected::RequestRefused(413),
        }
    }

    pub const ALL: [Class; 11] = [
        Class::Valid,
        Class::BadSignature,
        Class::OtherKey,
        Class::UnknownDevice,
        Class::Replay,
        Class::Future,
        Class::Stale,
        Class::Teleport,
        Class::OutOfRange,
        Class::MalformedBody,
        Class::OversizeBody,
    ];
}

/// What ingest answered for one reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Not answered yet.
    Pending,
    /// 200 and not in the `rejected` list: the pipeline owes it a place in the lake.
    Accepted,
    /// Refused as an item with this code (the request itself may have been 200 or 401).
    Rejected(String),
    /// The whole request got this status without per-item verdicts (400, 413, 429, 503...).
    Refused(u16),
    /// No answer (connection error): it may or may not have been enqueued.
    NoAnswer,
}

/// One reading as sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub key: String,
    pub seq: u64,
    pub kind: KindName,
    pub class: Class,
    /// Rows it makes in its kind's table when valid (sensors: one per measurement).
    pub rows: u32,
    pub answer: Answer,
}

/// Every reading sent in a run, with ingest's answers.
#[derive(Debug, Default)]
pub struct Ledger {
    pub sent: Vec<Sent>,
    /// Requests sent per class of request (normal, malformed_body, oversize_body) and status.
    pub requests: BTreeMap<(String, u16), u64>,
}

impl Ledger {
    /// Readings built but never sent (the run ended first): they owe the lake nothing.
    pub fn unsent(&mut self, first: usize, n: usize) {
        for s in &mut self.sent[first..first + n] {
            s.answer = Answer::Refused(0);
        }
    }

    /// Records a request's answer for the readings `first..first + n`.
    pub fn answer(&mut self, first: usize, n: usize, status: u16, body: &serde_json::Value) {
        let items = &mut self.sent[first..first + n];
        let rejected: BTreeMap<usize, String> = body["rejected"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                Some((
                    r["index"].as_u64()? as usize,
                    r["code"].as_str()?.to_string(),
                ))
            })
            .collect();
        let per_item = status == 200 || (status == 401 && !rejected.is_empty());
        for (i, s) in items.iter_mut().enumerate() {
            s.answer = if status == 0 {
                Answer::NoAnswer
            } else if !per_item {
                Answer::Refused(status)
            } else if let Some(code) = rejected.get(&i) {
                Answer::Rejected(code.clone())
            } else if status == 200 {
                Answer::Accepted
            } else {
                Answer::Refused(status)
            };
        }
    }
}

/// One request the generator built: the body, its content type, the readings in it (indexes into
/// the ledger when one is kept) and its request class.
#[derive(Debug)]
pub struct Outgoing {
    pub body: Vec<u8>,
    pub content_type: &'static str,
    pub n: u64,
    pub request_class: Class,
    /// The ledger index of its first reading (readings are consecutive), when a ledger is kept.
    pub first: Option<usize>,
}

/// Builds batches with the adversarial mix on top of a [`Fleet`].
pub struct Mixer {
    pub fleet: Fleet,
    mix: Adversarial,
    rng: SmallRng,
    heartbeats: Vec<usize>,
    sensors: Vec<usize>,
    unknown: Vec<(SigningKey, u64)>,
    /// Recent valid readings, for replays.
    recent: Vec<(SignedReading, KindName, u32)>,
    max_body_bytes: usize,
    /// The malformed and oversize requests due: each request adds its share, and a class is sent
    /// when its count reaches one. Spread evenly from a random start rather than drawn per
    /// request, so a run of `n` requests sends each class `n × share` times, give or take one, and
    /// never leaves a class out by chance (drawn, 160 requests at 3% sent none about once in 130 runs).
    requests_due: [f64; 2],
}

const RECENT: usize = 4096;

impl Mixer {
    /// `max_body_bytes`: the target ingest's limit (oversize bodies are one KiB above it).
    pub fn new(fleet: Fleet, mix: Adversarial, seed: u64, max_body_bytes: usize) -> Mixer {
        // The adversarial classes that need a device of a kind draw from those sending from the
        // start (not a pilot's hotspots before their start).
        let by_kind = |k: KindName| -> Vec<usize> {
            (0..fleet.awake())
                .filter(|i| fleet.devices[*i].kind == k)
                .collect()
        };
        let (heartbeats, sensors) = (by_kind(KindName::Heartbeat), by_kind(KindName::Sensor));
        // Unregistered devices: keys from another seed, never in the registry.
        let unknown = (0..16)
            .map(|i| (device_key(seed ^ 0x5eed_bad0_0000_0000, i), 1))
            .collect();
        let mut rng = SmallRng::seed_from_u64(seed ^ 0xadfe_5a11);
        let requests_due = [rng.random(), rng.random()];
        Mixer {
            fleet,
            mix,
            rng,
            requests_due,
            heartbeats,
            sensors,
            unknown,
            recent: Vec::new(),
            max_body_bytes,
        }
    }

    /// Keys of every device this mixer sends as (the fleet and the unregistered ones), hex.
    pub fn keys(&self) -> std::collections::HashSet<String> {
        self.fleet
            .devices
            .iter()
            .map(|d| &d.key)
            .chain(self.unknown.iter().map(|(k, _)| k))
            .map(|k| hex::encode(k.verifying_key().as_bytes()))
            .collect()
    }

    fn draw(&mut self) -> Class {
        let u: f64 = self.rng.random();
        let mut acc = 0.0;
        for (class, share) in self.mix.reading_shares() {
            acc += share.max(0.0);
            if u < acc {
                return class;
            }
        }
        Class::Valid
    }

    fn rows_of(kind: &Option<Kind>) -> u32 {
        match kind {
            Some(Kind::Sensor(s)) => s.measurements.len() as u32,
            _ => 1,
        }
    }

    /// One reading of a class drawn from the mix (`plain`: a valid one, kept out of the replay
    /// pool), and its ledger record.
    fn next(&mut self, now: i64, plain: bool) -> (SignedReading, Sent) {
        let class = if plain { Class::Valid } else { self.draw() };
        let fleet = &mut self.fleet;
        let sent = |s: &SignedReading, kind, seq, rows, class| Sent {
            key: hex::encode(&s.public_key),
            seq,
            kind,
            class,
            rows,
            answer: Answer::Pending,
        };
        let valid = |fleet: &mut Fleet, i: usize| {
            let r = fleet.next_reading(i, now);
            let rows = Self::rows_of(&r.kind);
            (sign_reading(&fleet.devices[i].key, &r), r.seq, rows)
        };
        match class {
            Class::Replay if !self.recent.is_empty() => {
                let (s, kind, rows) =
                    self.recent[self.rng.random_range(0..self.recent.len())].clone();
                let seq = hexpulse_schemas::wire::Reading::decode(s.payload.as_ref())
                    .map(|r| r.seq)
                    .unwrap_or(0);
                let e = sent(&s, kind, seq, rows, Class::Replay);
                (s, e)
            }
            Class::BadSignature | Class::OtherKey => {
                let i = fleet.pick();
                let kind = fleet.devices[i].kind;
                let r = fleet.next_reading(i, now);
                let mut s = if class == Class::OtherKey && fleet.devices.len() > 1 {
                    let j = (i + 1) % fleet.devices.len();
                    let mut s = sign_reading(&fleet.devices[j].key, &r);
                    s.public_key = fleet.devices[i]
                        .key
                        .verifying_key()
                        .to_bytes()
                        .to_vec()
                        .into();
                    s
                } else {
                    sign_reading(&fleet.devices[i].key, &r)
                };
                if class == Class::BadSignature || fleet.devices.len() == 1 {
                    let mut sig = s.signature.to_vec();
                    sig[7] ^= 0x20;
                    s.signature = sig.into();
                }
                let e = sent(&s, kind, r.seq, Self::rows_of(&r.kind), class);
                (s, e)
            }
            Class::UnknownDevice => {
                let u = self.rng.random_range(0..self.unknown.len());
                let seq = self.unknown[u].1;
                self.unknown[u].1 += 1;
                // A valid-looking heartbeat from the first fleet device's template.
                let mut r = fleet.next_reading(0, now);
                r.seq = seq;
                let s = sign_reading(&self.unknown[u].0, &r);
                let e = sent(&s, fleet.devices[0].kind, seq, 1, class);
                (s, e)
            }
            Class::Future | Class::Stale => {
                let i = fleet.pick();
                let mut r = fleet.next_reading(i, now);
                r.device_time_ms = if class == Class::Future {
                    now + 3_600_000
                } else {
                    now - 3 * 3_600_000
                };
                let s = sign_reading(&fleet.devices[i].key, &r);
                let e = sent(
                    &s,
                    fleet.devices[i].kind,
                    r.seq,
                    Self::rows_of(&r.kind),
                    class,
                );
                (s, e)
            }
            Class::Teleport if !self.heartbeats.is_empty() => {
                let i = self.heartbeats[self.rng.random_range(0..self.heartbeats.len())];
                let mut r = fleet.next_reading(i, now);
                let home = fleet.devices[i].home;
                let (lat, lng) =
                    offset(home.0, home.1, 50_000.0, self.rng.random_range(0.0..360.0));
                if let Some(l) = r.location.as_mut() {
                    l.lat = lat;
                    l.lng = lng;
                }
                let s = sign_reading(&fleet.devices[i].key, &r);
                let e = sent(&s, KindName::Heartbeat, r.seq, 1, class);
                (s, e)
            }
            Class::OutOfRange if !self.sensors.is_empty() => {
                let i = self.sensors[self.rng.random_range(0..self.sensors.len())];
                let mut r = fleet.next_reading(i, now);
                if let Some(Kind::Sensor(s)) = r.kind.as_mut()
                    && let Some(m) = s.measurements.first_mut()
                {
                    m.value = -5.0;
                }
                let s = sign_reading(&fleet.devices[i].key, &r);
                let e = sent(&s, KindName::Sensor, r.seq, Self::rows_of(&r.kind), class);
                (s, e)
            }
            // Valid, or a class the fleet has no device for.
            _ => {
                let i = fleet.pick();
                let kind = fleet.devices[i].kind;
                let (s, seq, rows) = valid(fleet, i);
                if plain {
                    // Not offered for replay: its request is refused, so a replay of it would be
                    // the first copy to arrive.
                } else if self.recent.len() < RECENT {
                    self.recent.push((s.clone(), kind, rows));
                } else {
                    let slot = self.rng.random_range(0..RECENT);
                    self.recent[slot] = (s.clone(), kind, rows);
                }
                let e = sent(&s, kind, seq, rows, Class::Valid);
                (s, e)
            }
        }
    }

    /// The class of the next request (see `requests_due`).
    fn request_class(&mut self) -> Class {
        let due = &mut self.requests_due;
        due[0] += self.mix.malformed_body.max(0.0);
        due[1] += self.mix.oversize_body.max(0.0);
        if due[0] >= 1.0 {
            due[0] -= 1.0;
            Class::MalformedBody
        } else if due[1] >= 1.0 {
            due[1] -= 1.0;
            Class::OversizeBody
        } else {
            Class::Valid
        }
    }

    /// The next request of `n` readings; their [`Sent`] records go to `ledger` when given.
    pub fn batch(&mut self, n: u64, now: i64, ledger: Option<&mut Vec<Sent>>) -> Outgoing {
        self.fleet.wake(now);
        let request_class = self.request_class();
        if request_class == Class::MalformedBody {
            // Field 1 with wire type 7 (which does not exist), then noise: no decoder accepts it.
            // Every other one is broken JSON instead.
            let (body, content_type) = if self.rng.random_bool(0.5) {
                let mut b = vec![0x0f];
                b.extend((0..64).map(|_| self.rng.random::<u8>()));
                (b, "application/x-protobuf")
            } else {
                (
                    br#"{"readings": [{"public_key": "#.to_vec(),
                    "application/json",
                )
            };
            return Outgoing {
                body,
                content_type,
                n: 0,
                request_class,
                first: None,
            };
        }
        let mut readings = Vec::with_capacity(n as usize);
        let mut sent = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let (s, mut e) = self.next(now, request_class == Class::OversizeBody);
            if request_class == Class::OversizeBody {
                e.class = Class::OversizeBody;
            }
            readings.push(s);
            sent.push(e);
        }
        let mut body = ReadingBatch { readings }.encode_to_vec();
        if request_class == Class::OversizeBody {
            // Pad with an unknown length-delimited field (number 15) past the limit.
            let pad = (self.max_body_bytes + 1024).saturating_sub(body.len());
            prost::encoding::encode_key(15, prost::encoding::WireType::LengthDelimited, &mut body);
            prost::encoding::encode_varint(pad as u64, &mut body);
            body.resize(body.len() + pad, 0);
        }
        let first = ledger.map(|l| {
            let first = l.len();
            l.extend(sent);
            first
        });
        Outgoing {
            body,
            content_type: "application/x-protobuf",
            n,
            request_class,
            first,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::KindMix;

    #[test]
    fn every_request_class_is_sent_in_a_short_run_whatever_the_seed() {
        let mix = KindMix {
            heartbeat: 1.0,
            sensor: 1.0,
            road: 1.0,
        };
        for seed in 0..300u64 {
            let fleet = Fleet::new(4, seed, mix);
            let mut m = Mixer::new(fleet, Adversarial::uniform(0.03), seed, 1 << 20);
            // 40 requests at 3%: 1.2 of each class due. Drawn per request, a class was left out
            // in about 30% of such runs.
            let classes: Vec<Class> = (0..40).map(|_| m.request_class()).collect();
            for class in [Class::MalformedBody, Class::OversizeBody] {
                let n = classes.iter().filter(|c| **c == class).count();
                assert!((1..=2).contains(&n), "seed {seed}: {n} of {class:?}");
            }
        }
    }
}
