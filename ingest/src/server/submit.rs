//! What every device door does with a batch, whatever carried it (HTTP, gRPC): the address's rate
//! limit, the in-flight budget, the checks on the verify pool, the devices' rate limits, the produce
//! to Kafka, and the verdicts. A door only reads the batch and maps a [`Refusal`] to its own status.

use super::*;

/// A batch refused as a whole: nothing of it was accepted. Each door maps it to its status (HTTP
/// status, gRPC code) and carries [`Refusal::code`], the message and the retry delay.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The client address is over its `rate_per_ip` budget (or failed authentications spent it).
    RateLimited { why: &'static str, wait: Duration },
    /// Every item that passed the checks is over its device's rate; the others' reasons.
    DevicesRateLimited {
        wait: Duration,
        rejected: Vec<ItemRejection>,
    },
    /// The in-flight budget or the producer queue is full.
    Overloaded(&'static str),
    /// The batch as a whole: content type, encoding, size, framing.
    Body(BodyError),
    /// Every item is from a device the registry does not know; each item's reason.
    UnknownDevice { rejected: Vec<ItemRejection> },
    /// The broker is unreachable or acknowledged nothing.
    BrokerUnavailable(&'static str),
    /// A bug or a panic on the verify pool.
    Internal(&'static str),
}

impl Refusal {
    /// The stable code of the error body (WIRE.md).
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Refusal::RateLimited { .. } | Refusal::DevicesRateLimited { .. } => "rate_limited",
            Refusal::Overloaded(_) => "overloaded",
            Refusal::Body(
                BodyError::UnsupportedMediaType(_) | BodyError::UnsupportedEncoding(_),
            ) => "unsupported_media_type",
            Refusal::Body(BodyError::TooLarge(_)) => "body_too_large",
            Refusal::Body(BodyError::Undecodable(_)) => "undecodable_body",
            Refusal::UnknownDevice { .. } => "unknown_device",
            Refusal::BrokerUnavailable(_) => "broker_unavailable",
            Refusal::Internal(_) => "internal",
        }
    }

    pub(crate) fn message(&self) -> String {
        match self {
            Refusal::RateLimited { why, .. } => (*why).into(),
            Refusal::DevicesRateLimited { .. } => {
                "the batch's devices are over their ingest rate; nothing was accepted".into()
            }
            Refusal::Overloaded(why) | Refusal::BrokerUnavailable(why) | Refusal::Internal(why) => {
                (*why).into()
            }
            Refusal::Body(e) => e.to_string(),
            Refusal::UnknownDevice { .. } => {
                "no item of the batch comes from a registered device".into()
            }
        }
    }

    /// Seconds to wait before a retry can succeed; `None` when retrying the same batch cannot.
    pub(crate) fn retry_after_s(&self) -> Option<u32> {
        match self {
            Refusal::RateLimited { wait, .. } | Refusal::DevicesRateLimited { wait, .. } => {
                Some(retry_after_secs(*wait))
            }
            Refusal::Overloaded(_) => Some(1),
            Refusal::BrokerUnavailable(_) => Some(2),
            Refusal::Body(_) | Refusal::UnknownDevice { .. } | Refusal::Internal(_) => None,
        }
    }

    /// Each item's reason, where the refusal has them.
    pub(crate) fn rejected(&self) -> &[ItemRejection] {
        match self {
            Refusal::DevicesRateLimited { rejected, .. } | Refusal::UnknownDevice { rejected } => {
                rejected
            }
            _ => &[],
        }
    }

    /// The refusal as the wire carries it (gRPC).
    pub(crate) fn to_wire(&self) -> hexpulse_schemas::wire::Refusal {
        hexpulse_schemas::wire::Refusal {
            code: self.code().into(),
            message: self.message(),
            retry_after_s: self.retry_after_s().unwrap_or(0),
            rejected: self.rejected().to_vec(),
        }
    }
}

/// A batch as a door read it, with the in-flight budget its bytes hold.
pub(crate) struct Batch {
    pub raw: Bytes,
    pub permit: tokio::sync::OwnedSemaphorePermit,
    /// `Content-Encoding`, when the door has one.
    pub encoding: Option<String>,
    pub format: body::Format,
    /// The client address (rate limits and the bad-signature share are kept per address).
    pub source: Option<IpAddr>,
    /// When the door began to receive it (the envelope's receive time).
    pub received_ms: i64,
}

impl Ingest {
    /// The client behind a request from `peer` (the TCP peer, or who a trusted proxy names in
    /// X-Forwarded-For): the key of the per-address limits, whatever the door.
    pub(crate) fn client_of(
        &self,
        peer: Option<SocketAddr>,
        headers: &HeaderMap,
    ) -> Option<IpAddr> {
        peer.map(|p| client_ip(p.ip(), headers, &self.cfg.trusted_proxies))
    }

    /// The client address's `rate_per_ip` budget, spent once per batch before it is read.
    pub(crate) fn admit(&self, source: Option<IpAddr>) -> Result<(), Refusal> {
        match source.and_then(|ip| self.per_ip.check(&ip).err()) {
            Some(wait) => Err(Refusal::RateLimited {
                why: "too many requests from this address",
                wait,
            }),
            None => Ok(()),
        }
    }

    /// Reserves `bytes` of the in-flight budget; refused (not queued) when it is spent.
    pub(crate) fn reserve(
        &self,
        bytes: usize,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Refusal> {
        let n = bytes.div_ceil(PERMIT_BYTES).clamp(1, self.inflight_permits) as u32;
        let permit = self
            .inflight
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| Refusal::Overloaded("too many bytes in flight"))?;
        self.publish_inflight();
        Ok(permit)
    }

    pub(crate) fn publish_inflight(&self) {
        metrics::gauge!(m::INFLIGHT_BYTES).set(
            ((self.inflight_permits - self.inflight.available_permits()) * PERMIT_BYTES) as f64,
        );
    }

    /// Checks a batch on the verify pool, produces what passed, and answers each item's verdict once
    /// Kafka acknowledged the accepted ones.
    pub(crate) async fn submit(self: &Arc<Self>, batch: Batch) -> Result<IngestResponse, Refusal> {
        let bad_share = self.bad_shares.of(batch.source);
        let (source, received_ms) = (batch.source, batch.received_ms);
        // Decompression, parsing and the checks run on the CPU pool, off the I/O runtime. The job
        // owns the reservation: a client that goes away does not free the budget while its job
        // still waits or runs, so the budget also bounds the pool's queue.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            encoding: batch.encoding,
            format: batch.format,
            raw: batch.raw,
            permit: batch.permit,
            bad_share: bad_share.clone(),
            state: self.clone(),
        };
        self.pool.spawn(move || {
            let _ = tx.send(job.run());
        });
        let Ok((done, _permit)) = rx.await else {
            return Err(Refusal::Internal("verification task failed"));
        };
        let (items, checked) = done?;
        metrics::histogram!(m::VERIFY_BATCH_SIZE).record(checked.verify_batch_size as f64);
        metrics::histogram!(m::VERIFY_SECONDS).record(checked.verify_time.as_secs_f64());
        metrics::gauge!(m::BAD_SIGNATURE_SHARE).set(bad_share.get());
        self.produce_checked(items, checked, received_ms, source)
            .await
    }

    async fn produce_checked(
        &self,
        items: Vec<RawItem>,
        checked: Checked,
        received_ms: i64,
        source: Option<IpAddr>,
    ) -> Result<IngestResponse, Refusal> {
        let mut rejected: Vec<ItemRejection> = Vec::new();
        // The items to produce, and each one's index in the batch.
        let (mut records, mut to_send): (Vec<(Bytes, Bytes)>, Vec<usize>) = Default::default();
        let mut device_wait: Option<Duration> = None;
        for (i, (item, verdict)) in items.into_iter().zip(&checked.verdicts).enumerate() {
            match verdict {
                Ok(()) => {
                    let key = item
                        .envelope
                        .as_ref()
                        .map(|e| e.public_key.clone())
                        .unwrap_or_default();
                    if let Err(wait) = self.per_device.check(&(key.clone(), source)) {
                        device_wait = Some(device_wait.map_or(wait, |w| w.min(wait)));
                        count_rejected(RejectReason::RateExceeded.as_str());
                        rejected.push(ItemRejection {
                            index: i as u32,
                            code: RejectReason::RateExceeded.as_str().into(),
                            message: format!(
                                "the device is over its ingest rate ({} readings/s); retry later",
                                self.cfg.rate_per_device.per_second
                            ),
                        });
                        continue;
                    }
                    records.push((key, item.value));
                    to_send.push(i);
                }
                Err(r) => {
                    count_rejected(r.reason.as_str());
                    rejected.push(ItemRejection {
                        index: i as u32,
                        code: r.reason.as_str().into(),
                        message: r.message.clone(),
                    });
                }
            }
        }
        if checked.all_unknown_device() {
            return Err(Refusal::UnknownDevice { rejected });
        }
        if let (true, Some(wait)) = (to_send.is_empty(), device_wait) {
            return Err(Refusal::DevicesRateLimited { wait, rejected });
        }
        let mut accepted = 0u32;
        if !to_send.is_empty() {
            if !self.sink.broker_up() {
                return Err(Refusal::BrokerUnavailable(
                    "the Kafka broker is unreachable; nothing was accepted",
                ));
            }
            let results = self.sink.produce_all(&records, received_ms).await;
            let mut not_delivered = Vec::new();
            for (i, res) in to_send.into_iter().zip(results) {
                match res {
                    Ok(()) => accepted += 1,
                    Err(f) => not_delivered.push((i, f)),
                }
            }
            metrics::counter!(m::ITEMS, "outcome" => "accepted", "reason" => "")
                .increment(accepted.into());
            if accepted == 0 {
                let queue_full = not_delivered
                    .iter()
                    .all(|(_, f)| *f == DeliveryFailure::QueueFull);
                return Err(if queue_full {
                    Refusal::Overloaded("the producer queue is full; nothing was accepted")
                } else {
                    Refusal::BrokerUnavailable(
                        "the broker did not acknowledge; nothing was accepted",
                    )
                });
            }
            for (i, f) in not_delivered {
                metrics::counter!(m::ITEMS, "outcome" => "not_delivered", "reason" => f.code())
                    .increment(1);
                rejected.push(ItemRejection {
                    index: i as u32,
                    code: f.code().into(),
                    message: "not acknowledged by Kafka; retry this item".into(),
                });
            }
            rejected.sort_by_key(|r| r.index);
        }
        Ok(IngestResponse { accepted, rejected })
    }
}

fn count_rejected(reason: &'static str) {
    metrics::counter!(m::ITEMS, "outcome" => "rejected", "reason" => reason).increment(1);
}

/// The running share of bad signatures per source (client address, as rate limits key it), so
/// that a client sending many bad signatures makes only its own batches verify in small chunks,
/// not everyone's. A new source starts at zero. At most [`MAX_SOURCES`] are remembered; when full,
/// sources whose share has fallen to about zero are forgotten (they start again at zero), and past
/// that new sources share one estimate.
#[derive(Default)]
pub(crate) struct SourceShares {
    by_source: std::sync::Mutex<std::collections::HashMap<IpAddr, Arc<BadShare>>>,
    shared: Arc<BadShare>,
}

const MAX_SOURCES: usize = 65_536;

impl SourceShares {
    fn of(&self, source: Option<IpAddr>) -> Arc<BadShare> {
        let Some(ip) = source else {
            return self.shared.clone();
        };
        let mut map = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(share) = map.get(&ip) {
            return share.clone();
        }
        if map.len() >= MAX_SOURCES {
            map.retain(|_, share| share.get() > 1e-4);
            if map.len() >= MAX_SOURCES {
                return self.shared.clone();
            }
        }
        map.entry(ip).or_default().clone()
    }
}

/// The CPU-pool part of a batch: decompress, parse, check. It owns the batch's reservation.
struct Job {
    encoding: Option<String>,
    format: body::Format,
    raw: Bytes,
    permit: tokio::sync::OwnedSemaphorePermit,
    /// The running share of bad signatures of the batch's source.
    bad_share: Arc<BadShare>,
    state: Arc<Ingest>,
}

/// A batch's items and the verdicts of its checks.
type Parsed = (Vec<RawItem>, Checked);

impl Job {
    fn run(mut self) -> (Result<Parsed, Refusal>, tokio::sync::OwnedSemaphorePermit) {
        let r = self.work();
        (r, self.permit)
    }

    fn work(&mut self) -> Result<Parsed, Refusal> {
        let s = &self.state;
        let raw = std::mem::take(&mut self.raw);
        let raw_len = raw.len();
        let decompressed =
            body::decompress(self.encoding.as_deref(), raw, s.cfg.max_decompressed_bytes)
                .map_err(Refusal::Body)?;
        if decompressed.len() > raw_len {
            let more = s.reserve(decompressed.len() - raw_len)?;
            self.permit.merge(more);
        }
        let items =
            body::parse_batch(self.format, decompressed, s.cfg.max_items).map_err(Refusal::Body)?;
        let checked = pipeline::check_batch(&items, &s.registry, &self.bad_share);
        Ok((items, checked))
    }
}
