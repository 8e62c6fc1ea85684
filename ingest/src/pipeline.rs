//! The per-item checks of a batch, run on the CPU pool (never on the I/O runtime).
//!
//! Order per item: the envelope decoded ([`crate::body`]); then payload decode, kind and schema version,
//! key validity ([`hexpulse_schemas::check::decode_item`]); then device known and of the registered
//! kind (registry); finally one batched signature verification over all items that got this far,
//! planned from the running share of bad signatures ([`sign::verify_batch_expecting`]).

use std::time::{Duration, Instant};

use hexpulse_common::registry::Registry;
use hexpulse_schemas::check::{Rejection, decode_envelope, parse_key};
use hexpulse_schemas::reasons::RejectReason;
use hexpulse_schemas::sign::{self, BatchItem};

use crate::body::RawItem;

/// Verdicts of one batch, in request order.
#[derive(Debug)]
pub struct Checked {
    pub verdicts: Vec<Result<(), Rejection>>,
    /// Items that reached signature verification.
    pub verify_batch_size: usize,
    pub verify_time: Duration,
}

impl Checked {
    /// True when the batch is non-empty and every item is from a device the registry does not know.
    pub fn all_unknown_device(&self) -> bool {
        !self.verdicts.is_empty()
            && self
                .verdicts
                .iter()
                .all(|v| matches!(v, Err(r) if r.reason == RejectReason::UnknownDevice))
    }
}

/// Runs every check on `items`; `bad_share` is the running share of bad signatures, read to plan the
/// verification and updated with what it found.
pub fn check_batch(items: &[RawItem], registry: &Registry, bad_share: &sign::BadShare) -> Checked {
    let mut verdicts: Vec<Result<(), Rejection>> = Vec::with_capacity(items.len());
    let mut decoded = Vec::with_capacity(items.len());
    {
        let view = registry.read();
        for item in items {
            let verdict = item
                .envelope
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|env| {
                    let d = decode_envelope(env)?;
                    // Known devices carry their parsed key; only unknown keys are parsed here, to tell
                    // a weak key from an unregistered one.
                    let Some((device, key)) = view.get_with_key(&env.public_key) else {
                        parse_key(env)?;
                        return Err(Rejection::new(
                            RejectReason::UnknownDevice,
                            format!("device {} is not registered", hex::encode(&env.public_key)),
                        ));
                    };
                    if device.kind != d.kind {
                        return Err(Rejection::new(
                            RejectReason::KindMismatch,
                            format!(
                                "device is registered as {}, reading is {}",
                                device.kind, d.kind
                            ),
                        ));
                    }
                    Ok((*key, d))
                });
            match verdict {
                Ok(d) => {
                    decoded.push((verdicts.len(), d));
                    verdicts.push(Ok(()));
                }
                Err(r) => verdicts.push(Err(r)),
            }
        }
    }

    let start = Instant::now();
    let batch: Vec<BatchItem<'_>> = decoded
        .iter()
        .map(|(i, (key, d))| BatchItem {
            key,
            payload: items[*i]
                .envelope
                .as_ref()
                .map(|e| e.payload.as_ref())
                .unwrap_or_default(),
            signature: &d.signature,
        })
        .collect();
    let (ok, stats) = sign::verify_batch_expecting(&batch, bad_share.get());
    bad_share.observe_batch(&stats, batch.len());
    metrics::counter!(crate::metrics::SIGNATURE_CHECKS, "kind" => "batch")
        .increment(stats.batch_checks as u64);
    metrics::counter!(crate::metrics::SIGNATURE_CHECKS, "kind" => "single")
        .increment(stats.single_checks as u64);
    for ((i, _), valid) in decoded.iter().zip(ok) {
        if !valid {
            verdicts[*i] = Err(Rejection::new(
                RejectReason::BadSignature,
                "signature does not verify over the domain prefix and payload",
            ));
        }
    }
    Checked {
        verdicts,
        verify_batch_size: batch.len(),
        verify_time: start.elapsed(),
    }
}
