//! Semantic validation of one raw record, with the per-device state that duplicates, speed and rate
//! checks need. One [`Validator`] per Kafka partition: every device's readings share a partition
//! (the record key is the device key), so the state of a device lives in exactly one validator.
//!
//! Order of checks (first failure wins; documented in schemas/REASONS.md terms):
//! 1. stateless decode (`malformed`, `unsupported_kind_or_version`);
//! 2. registry: `unknown_device` (or `weak_key` for a key no registry could hold), then the signature
//!    when re-verification is on (`bad_signature`), then `kind_mismatch`;
//! 3. `location_invalid`;
//! 4. `future_timestamp`, then `late` (both against ingest's receive time, so a replay of the log
//!    decides the same way);
//! 5. `duplicate` (same device and sequence number; an identical valid signature implies an identical
//!    payload, hence the same sequence number);
//! 6. `value_out_of_range` (sensor metrics);
//! 7. `too_far_from_asserted` (heartbeats and sensor readings);
//! 8. `impossible_speed` (against the device's valid readings just before and after it in device time);
//! 9. `rate_exceeded`.
//!
//! Only valid readings enter the state, so a rejected reading never shadows a later valid one.

mod checks;
mod state;

pub use checks::{distance_m, location_problem};
pub use state::{DeviceState, Registered};

use rustc_hash::FxHashMap as HashMap;

use hexpulse_common::registry::Registry;
use hexpulse_schemas::check::{DecodedEnvelope, Rejection, decode_envelope, parse_key};
use hexpulse_schemas::reasons::RejectReason;
use hexpulse_schemas::sign;
use hexpulse_schemas::wire::envelope::{self, EnvelopeKey};
use hexpulse_schemas::wire::{Kind, KindName, Reading, SignedReading, partition_of};
use prost::Message;

use hexpulse_lake::rules::Rules;

use crate::h3bin::{Binner, Cells};

/// A raw Kafka record to validate.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    pub partition: i32,
    pub offset: i64,
    /// The device's signed bytes (the record's value without ingest's envelope).
    pub value: &'a [u8],
    pub receive_ms: i64,
    /// Why the envelope does not vouch for `receive_ms` ([`Validator::open_envelope`]), if it does not.
    pub envelope_problem: Option<&'static str>,
}

/// A reading that passed every check.
#[derive(Debug, Clone)]
pub struct ValidReading {
    pub key: [u8; 32],
    pub kind: KindName,
    pub reading: Reading,
    /// Metres from the device's asserted location in the registry.
    pub asserted_distance_m: f64,
}

/// What validation decided. Rejections keep whatever could be decoded.
#[derive(Debug, Clone)]
pub enum Verdict {
    Valid(ValidReading),
    Rejected {
        rejection: Rejection,
        key: Option<[u8; 32]>,
        reading: Option<Reading>,
        kind: Option<KindName>,
    },
}

/// Validation state and logic of one partition.
pub struct Validator {
    rules: Rules,
    registry: Registry,
    reverify: bool,
    devices: HashMap<[u8; 32], DeviceState>,
    sealed: Option<std::sync::Arc<hexpulse_lake::epoch::SealedEpochs>>,
    /// The key that ingest tags envelopes with (`[kafka] envelope_key`).
    envelope_key: Option<EnvelopeKey>,
    /// The raw topic's partition count, for the placement check.
    partitions: Option<i32>,
}

impl Validator {
    pub fn new(rules: Rules, registry: Registry, reverify: bool) -> Self {
        Validator {
            rules,
            registry,
            reverify,
            devices: HashMap::default(),
            sealed: None,
            envelope_key: None,
            partitions: None,
        }
    }

    /// With re-verification on: accept only records whose envelope ingest tagged with `key`.
    pub fn with_envelope_key(mut self, key: Option<EnvelopeKey>) -> Self {
        self.envelope_key = key;
        self
    }

    /// With re-verification on: accept only records that sit in their device's partition of a
    /// topic with `partitions` partitions ([`partition_of`]). Dedupe is per partition; a copy of a
    /// device's record produced into another partition would otherwise be stored twice.
    pub fn with_partitions(mut self, partitions: i32) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// The receive time and the device's signed bytes of a raw record's `value`: from ingest's
    /// envelope, or, for a record without one (produced around ingest, or before envelopes), the
    /// whole value with `record_ms` (the Kafka timestamp). The third part says why the receive time
    /// is not vouched for, when an envelope key is set and the envelope is not tagged with it.
    pub fn open_envelope<'v>(
        &self,
        value: &'v [u8],
        record_ms: i64,
    ) -> (i64, &'v [u8], Option<&'static str>) {
        match envelope::decode(value) {
            Some(e) => {
                let problem = match (&self.envelope_key, e.is_tagged()) {
                    (Some(k), true) if !e.authentic(k) => {
                        Some("its envelope's tag does not verify")
                    }
                    (Some(_), false) => Some("its envelope is not tagged"),
                    _ => None,
                };
                (e.received_ms, e.signed, problem)
            }
            None => (
                record_ms,
                value,
                self.envelope_key.as_ref().map(|_| "it has no envelope"),
            ),
        }
    }

    /// Readings of these sealed epochs are rejected as `late`.
    pub fn with_sealed(
        mut self,
        sealed: std::sync::Arc<hexpulse_lake::epoch::SealedEpochs>,
    ) -> Self {
        self.sealed = Some(sealed);
        self
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Number of devices with state.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// The H3 cells of a valid reading's point, from the last point of its device, whose state the
    /// reading's checks have just read (so this look-up finds it in the cache).
    pub fn cells_of(
        &mut self,
        binner: &Binner,
        key: &[u8; 32],
        lat: f64,
        lng: f64,
    ) -> Option<Cells> {
        match self.devices.get_mut(key) {
            Some(s) => binner.cells_at(&mut s.last_point, lat, lng),
            None => binner.cells(lat, lng),
        }
    }

    /// Feeds a reading already in the lake (state rebuild after a restart or a rebalance).
    /// `kind`: the table the row came from (only dashcams keep every position).
    pub fn remember(
        &mut self,
        key: [u8; 32],
        seq: u64,
        event_ms: i64,
        (lat, lng): (f64, f64),
        kind: KindName,
    ) {
        let window = self.rules.rate.window.as_millis() as i64;
        self.devices.entry(key).or_default().accept(
            seq,
            event_ms,
            (lat, lng),
            kind == KindName::Road,
            window,
        );
    }

    /// Forgets sequence numbers too old to matter: anything older than the lateness plus skew before
    /// `receive_ms` is `late` anyway.
    pub fn prune(&mut self, receive_ms: i64) {
        let horizon = receive_ms
            - (self.rules.time.allowed_lateness + self.rules.time.max_future_skew).as_millis()
                as i64;
        let window = self.rules.rate.window.as_millis() as i64;
        self.devices.retain(|_, d| d.prune(horizon, window));
    }

    /// Decides one record and, when valid, records it in the state.
    /// Whether signatures are verified again here.
    pub fn reverifies(&self) -> bool {
        self.reverify
    }

    /// Re-verifies the signatures of `values` (raw records) as one Ed25519 batch (bisected on
    /// failure, like ingest). `result[i]`: `Some(valid)` for a record whose key is registered and
    /// whose signature parses; `None` otherwise (`validate` then rejects it for that reason).
    pub fn verify_batch(&self, values: &[&[u8]]) -> Vec<Option<bool>> {
        let envelopes: Vec<Option<SignedReading>> = values
            .iter()
            .map(|v| SignedReading::decode(*v).ok())
            .collect();
        let mut prepared = Vec::with_capacity(values.len());
        {
            let view = self.registry.read();
            for (i, e) in envelopes.iter().enumerate() {
                let Some(e) = e else { continue };
                let Some((_, vk)) = view.get_with_key(&e.public_key) else {
                    continue;
                };
                let Ok(sig) = <[u8; 64]>::try_from(e.signature.as_ref()) else {
                    continue;
                };
                prepared.push((i, *vk, ed25519_dalek::Signature::from_bytes(&sig)));
            }
        }
        let items: Vec<sign::BatchItem<'_>> = prepared
            .iter()
            .map(|(i, vk, sig)| sign::BatchItem {
                key: vk,
                payload: envelopes[*i]
                    .as_ref()
                    .map_or(&[][..], |e| e.payload.as_ref()),
                signature: sig,
            })
            .collect();
        let (ok, _) = sign::verify_batch(&items);
        let mut out = vec![None; values.len()];
        for ((i, _, _), good) in prepared.iter().zip(ok) {
            out[*i] = Some(good);
        }
        out
    }

    pub fn validate(&mut self, rec: RawRecord<'_>) -> Verdict {
        self.validate_checked(rec, None)
    }

    /// [`Validator::validate`], with the signature already checked by [`Validator::verify_batch`]
    /// (`Some`), or not (`None`: verified here if re-verification is on).
    pub fn validate_checked(&mut self, rec: RawRecord<'_>, signature_ok: Option<bool>) -> Verdict {
        let reject = |reason, message: String| Verdict::Rejected {
            rejection: Rejection::new(reason, message),
            key: None,
            reading: None,
            kind: None,
        };
        // Records that did not come through ingest as it writes them: nothing but the signed bytes
        // can be trusted, and those say nothing of when the reading arrived, or of its partition.
        if self.reverify
            && let Some(problem) = rec.envelope_problem
        {
            return reject(
                RejectReason::BadSignature,
                format!("record not written by an ingest holding the envelope key: {problem}"),
            );
        }
        // Decoded from one copy of the record, which its byte fields then share: decoding the
        // borrowed record copied each of them into an allocation of its own.
        let envelope = match SignedReading::decode(bytes::Bytes::copy_from_slice(rec.value)) {
            Ok(e) => e,
            Err(e) => return reject(RejectReason::Malformed, format!("signed reading: {e}")),
        };
        if self.reverify
            && let Some(n) = self.partitions
            && partition_of(&envelope.public_key, n) != rec.partition
        {
            return reject(
                RejectReason::Malformed,
                format!(
                    "record is in partition {}, its device's partition is {} of {n}: \
                     not produced by ingest",
                    rec.partition,
                    partition_of(&envelope.public_key, n)
                ),
            );
        }
        let key: Option<[u8; 32]> = envelope.public_key.as_ref().try_into().ok();
        let decoded = match decode_envelope(&envelope) {
            Ok(d) => d,
            Err(rejection) => {
                return Verdict::Rejected {
                    rejection,
                    key,
                    reading: None,
                    kind: None,
                };
            }
        };
        let with = |reason, message: String, d: &DecodedEnvelope| Verdict::Rejected {
            rejection: Rejection::new(reason, message),
            key,
            reading: Some(d.reading.clone()),
            kind: Some(d.kind),
        };
        // What the registry says of the device: from the device's state when the registry has not
        // changed since a reading of it was accepted (with re-verification off, which needs the
        // parsed key); else from the registry, which holds each known device's parsed key, so keys
        // are not decompressed per record (and the parsed key, 192 bytes, is not copied out of it).
        // Each look-up in a map of many devices is likely a cache miss: this one also brings in the
        // state that the checks below read.
        let generation = self.registry.generation();
        let remembered = key
            .filter(|_| !self.reverify)
            .and_then(|k| Some((self.devices.get(&k)?.registered(generation)?, k)));
        let (registered, key, signature_ok) = match remembered {
            Some((r, k)) => (r, k, true),
            None => {
                let view = self.registry.read();
                match view.get_with_key(&envelope.public_key) {
                    Some((d, vk)) => {
                        let ok = !self.reverify
                            || signature_ok.unwrap_or_else(|| {
                                sign::verify(vk, &envelope.payload, &decoded.signature).is_ok()
                            });
                        let r = Registered {
                            generation,
                            kind: d.kind,
                            asserted: (d.lat, d.lng),
                        };
                        (r, vk.to_bytes(), ok)
                    }
                    None => {
                        let (reason, message) = match parse_key(&envelope) {
                            Err(r) => (r.reason, r.message),
                            Ok(_) => (
                                RejectReason::UnknownDevice,
                                "device is no longer registered".into(),
                            ),
                        };
                        return with(reason, message, &decoded);
                    }
                }
            }
        };
        let (kind, asserted) = (registered.kind, registered.asserted);
        if !signature_ok {
            return with(
                RejectReason::BadSignature,
                "signature does not verify (re-verification)".into(),
                &decoded,
            );
        }
        if kind != decoded.kind {
            return with(
                RejectReason::KindMismatch,
                format!(
                    "device is registered as {kind}, reading is {}",
                    decoded.kind
                ),
                &decoded,
            );
        }
        let r = &decoded.reading;
        let loc = r.location.unwrap_or_default();
        if let Some(problem) = location_problem(
            loc.lat,
            loc.lng,
            self.rules.location.null_island_epsilon_deg,
        ) {
            return with(RejectReason::LocationInvalid, problem, &decoded);
        }
        let skew = self.rules.time.max_future_skew.as_millis() as i64;
        if r.device_time_ms > rec.receive_ms + skew {
            return with(
                RejectReason::FutureTimestamp,
                format!(
                    "device time is {} ms ahead of receive time",
                    r.device_time_ms - rec.receive_ms
                ),
                &decoded,
            );
        }
        let lateness = self.rules.time.allowed_lateness.as_millis() as i64;
        if r.device_time_ms < rec.receive_ms - lateness {
            return with(
                RejectReason::Late,
                format!(
                    "device time is {} ms before receive time",
                    rec.receive_ms - r.device_time_ms
                ),
                &decoded,
            );
        }
        if let Some(id) = self
            .sealed
            .as_ref()
            .and_then(|s| s.sealed_epoch_of(r.device_time_ms))
        {
            return with(
                RejectReason::Late,
                format!("epoch {id} is already sealed"),
                &decoded,
            );
        }
        // One look-up of the device's state for all the checks and the update (a map of many
        // devices: each look-up is likely a cache miss).
        let state = self.devices.get_mut(&key);
        if state.as_deref().is_some_and(|s| s.has_seq(r.seq)) {
            return with(
                RejectReason::Duplicate,
                format!("sequence number {} already stored", r.seq),
                &decoded,
            );
        }
        if let Some(Kind::Sensor(s)) = &r.kind
            && let Some(problem) = checks::range_problem(s, &self.rules)
        {
            return with(RejectReason::ValueOutOfRange, problem, &decoded);
        }
        let asserted_distance_m = distance_m((loc.lat, loc.lng), asserted);
        // Hotspots and sensors are installed where they are registered; dashcams move.
        if decoded.kind != KindName::Road {
            let d = asserted_distance_m;
            if d > self.rules.location.max_distance_from_asserted_m {
                return with(
                    RejectReason::TooFarFromAsserted,
                    format!("{d:.0} m from the asserted location"),
                    &decoded,
                );
            }
        }
        let here = (r.device_time_ms, loc.lat, loc.lng);
        if let Some(problem) = state.as_deref().and_then(|s| {
            s.neighbours(r.device_time_ms)
                .find_map(|n| checks::speed_problem(n, here, decoded.kind, &self.rules))
        }) {
            return with(RejectReason::ImpossibleSpeed, problem, &decoded);
        }
        let window = self.rules.rate.window.as_millis() as i64;
        if state.as_deref().is_some_and(|s| {
            s.count_in_window(r.device_time_ms, window) >= self.rules.rate.max_per_window
        }) {
            return with(
                RejectReason::RateExceeded,
                format!(
                    "more than {} readings in {:?}",
                    self.rules.rate.max_per_window, self.rules.rate.window
                ),
                &decoded,
            );
        }
        let accept = |s: &mut DeviceState| {
            s.set_registered(registered);
            s.accept(
                r.seq,
                r.device_time_ms,
                (loc.lat, loc.lng),
                decoded.kind == KindName::Road,
                window,
            )
        };
        match state {
            Some(s) => accept(s),
            None => accept(self.devices.entry(key).or_default()),
        }
        Verdict::Valid(ValidReading {
            key,
            kind: decoded.kind,
            reading: decoded.reading,
            asserted_distance_m,
        })
    }
}

#[cfg(test)]
mod tests;
