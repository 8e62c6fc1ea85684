//! The Kafka side of ingest: durable produce of accepted items, and broker reachability.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hexpulse_common::kafka::KafkaConfig;
use hexpulse_schemas::wire::envelope;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message};
use tokio_util::sync::CancellationToken;

use crate::config::IngestConfig;
use crate::metrics as m;

/// Why an item did not reach Kafka. Ingest-only answer codes, not lake rejection reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryFailure {
    /// The local producer queue is full: retry later (429).
    QueueFull,
    /// The broker did not acknowledge in time or refused it (503).
    NotDelivered,
}

impl DeliveryFailure {
    pub fn code(self) -> &'static str {
        match self {
            DeliveryFailure::QueueFull => "queue_full",
            DeliveryFailure::NotDelivered => "delivery_failed",
        }
    }
}

/// What became of one record of a [`Sink::produce_all`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Outcome {
    /// No report yet.
    Pending = 0,
    /// The broker acknowledged it at an offset.
    Acked,
    /// Acknowledged without an offset (see [`Sink::produce_all`]).
    WithoutOffset,
    /// The broker refused it, or the producer gave up on it.
    Failed,
    /// librdkafka dropped its ticket without a report.
    Dropped,
    /// Not enqueued: the local queue was full.
    QueueFull,
    /// Not enqueued: any other error.
    NotEnqueued,
}

impl Outcome {
    fn from_u8(v: u8) -> Outcome {
        [
            Outcome::Pending,
            Outcome::Acked,
            Outcome::WithoutOffset,
            Outcome::Failed,
            Outcome::Dropped,
            Outcome::QueueFull,
            Outcome::NotEnqueued,
        ]
        .get(usize::from(v))
        .copied()
        .unwrap_or(Outcome::Dropped)
    }
}

/// The outcomes of one [`Sink::produce_all`] call, settled once each by the producer's polling
/// thread (or by the call itself for records it could not enqueue). The call is woken once, when
/// the last one settles, rather than once per record.
struct Reports {
    outcomes: Box<[AtomicU8]>,
    unsettled: AtomicUsize,
    all_settled: tokio::sync::Notify,
}

impl Reports {
    fn new(n: usize) -> Arc<Reports> {
        Arc::new(Reports {
            outcomes: (0..n)
                .map(|_| AtomicU8::new(Outcome::Pending as u8))
                .collect(),
            unsettled: AtomicUsize::new(n),
            all_settled: tokio::sync::Notify::new(),
        })
    }

    /// Record `index`'s ticket, which its delivery report (or its drop) settles.
    fn ticket(self: &Arc<Self>, index: usize) -> Box<Ticket> {
        Box::new(Ticket {
            reports: self.clone(),
            index,
            settled: false,
        })
    }

    fn settle(&self, i: usize, outcome: Outcome) {
        self.outcomes[i].store(outcome as u8, Ordering::Release);
        if self.unsettled.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Stores a permit when the call is not waiting yet.
            self.all_settled.notify_one();
        }
    }

    fn outcome(&self, i: usize) -> Outcome {
        Outcome::from_u8(self.outcomes[i].load(Ordering::Acquire))
    }
}

/// A record's place in its call's [`Reports`]: the delivery opaque librdkafka hands back with the
/// record's report. Dropped without a report (the producer discarded the record), it settles as
/// [`Outcome::Dropped`], so a call never waits out its deadline for a report that cannot come.
struct Ticket {
    reports: Arc<Reports>,
    index: usize,
    settled: bool,
}

impl Ticket {
    fn settle(mut self, outcome: Outcome) {
        self.settled = true;
        self.reports.settle(self.index, outcome);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.settled {
            self.reports.settle(self.index, Outcome::Dropped);
        }
    }
}

/// The producer's context: each delivery report settles its record's [`Ticket`].
struct Reporter;

impl ClientContext for Reporter {}

impl ProducerContext for Reporter {
    type DeliveryOpaque = Box<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Box<Ticket>) {
        ticket.settle(match result {
            Ok(m) if m.offset() < 0 => Outcome::WithoutOffset,
            Ok(_) => Outcome::Acked,
            Err((e, _)) => {
                tracing::debug!(error = %e, "delivery failed");
                Outcome::Failed
            }
        });
    }
}

type RawProducer = Arc<ThreadedProducer<Reporter>>;

/// Idempotent, acks=all producer of raw readings.
///
/// After a failed delivery the producer is replaced by a new one (a new producer id): librdkafka
/// bumps an idempotent producer's epoch itself after such a failure, and tansu 0.6 cannot take a
/// produce with an epoch it did not hand out (ARCHITECTURE.md, tansu behaviours). The old one's
/// queue is purged when it is dropped; its items were, or will be, answered as not delivered.
#[derive(Clone)]
pub struct Sink {
    /// The current producer and its generation.
    producer: Arc<RwLock<(u64, RawProducer)>>,
    config: ClientConfig,
    topic: String,
    node: String,
    /// Tags every envelope when set (`[kafka] envelope_key`).
    envelope_key: Option<envelope::EnvelopeKey>,
    broker_up: Arc<AtomicBool>,
    /// How long `produce_all` waits for delivery reports.
    delivery_timeout: Duration,
}

impl Sink {
    pub fn new(kafka: &KafkaConfig, cfg: &IngestConfig) -> Result<Self, KafkaError> {
        // librdkafka keeps retrying past the request's own deadline (`produce_all`), see
        // `IngestConfig::producer_retry_timeout`.
        let mut cc = kafka.producer_config(
            &format!("hexpulse-ingest-{}", cfg.node_name),
            cfg.producer_retry_timeout.max(cfg.delivery_timeout),
        );
        cc.set(
            "queue.buffering.max.messages",
            cfg.producer_queue_messages.to_string(),
        );
        Ok(Sink {
            producer: Arc::new(RwLock::new((0, create(&cc)?))),
            config: cc,
            topic: kafka.raw_topic.clone(),
            node: cfg.node_name.clone(),
            envelope_key: kafka.envelope_key().map_err(KafkaError::ClientCreation)?,
            broker_up: Arc::new(AtomicBool::new(false)),
            delivery_timeout: cfg.delivery_timeout,
        })
    }

    fn current(&self) -> (u64, RawProducer) {
        self.producer.read().expect("producer lock").clone()
    }

    /// Replaces generation `failed` of the producer with a new one, unless that happened already.
    fn replace(&self, failed: u64) {
        let fresh = match create(&self.config) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "could not create a new producer; keeping the old one");
                return;
            }
        };
        let old = {
            let mut cur = self.producer.write().expect("producer lock");
            if cur.0 != failed {
                return;
            }
            std::mem::replace(&mut *cur, (failed + 1, fresh))
        };
        tracing::warn!(
            generation = old.0 + 1,
            "delivery failed; replaced the producer (new producer id)"
        );
        metrics::counter!(m::PRODUCER_REPLACED).increment(1);
        // Dropping purges its queue and waits briefly for the purge reports: not on this thread.
        tokio::task::spawn_blocking(move || drop(old));
    }

    /// Whether the last reachability probe reached the broker.
    pub fn broker_up(&self) -> bool {
        self.broker_up.load(Ordering::Relaxed)
    }

    /// Asks the broker for the topic's metadata; updates [`Sink::broker_up`].
    pub async fn probe(&self, timeout: Duration) -> bool {
        let (_, producer) = self.current();
        let topic = self.topic.clone();
        let up = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map(|md| {
                    md.topics().iter().any(|t| {
                        t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                    })
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        let was = self.broker_up.swap(up, Ordering::Relaxed);
        if was != up {
            if up {
                tracing::info!(topic = %self.topic, "broker reachable");
            } else {
                tracing::warn!(topic = %self.topic, "broker unreachable; answering 503 until it is back");
            }
        }
        metrics::gauge!(m::BROKER_UP).set(if up { 1.0 } else { 0.0 });
        up
    }

    /// Probes every `every` until `stop`.
    pub async fn watch(self, every: Duration, stop: CancellationToken) {
        let timeout = every.max(Duration::from_millis(500));
        let me = &self;
        me.probe(timeout).await;
        hexpulse_common::tasks::every(every, stop, move || async move {
            me.probe(timeout).await;
        })
        .await;
    }

    /// Produces each `(key, value)` and waits for every delivery report, up to the delivery
    /// timeout. `result[i]` is `Ok` only when the broker acknowledged item `i`; an item without a
    /// report by then is `NotDelivered`, while the producer keeps retrying it (its fate is unknown
    /// to the device, which sends it again).
    pub async fn produce_all(
        &self,
        items: &[(Bytes, Bytes)],
        received_ms: i64,
    ) -> Vec<Result<(), DeliveryFailure>> {
        let start = Instant::now();
        let reports = Reports::new(items.len());
        let (generation, producer) = self.current();
        let mut sent = 0;
        for (i, (key, value)) in items.iter().enumerate() {
            let value =
                envelope::encode(received_ms, &self.node, value, self.envelope_key.as_ref());
            let record = BaseRecord::with_opaque_to(&self.topic, reports.ticket(i))
                .key(key.as_ref())
                .payload(&value);
            sent = i + 1;
            match producer.send(record) {
                Ok(()) => {}
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    r.delivery_opaque.settle(Outcome::QueueFull);
                    break;
                }
                Err((e, r)) => {
                    tracing::warn!(error = %e, "enqueue failed");
                    r.delivery_opaque.settle(Outcome::NotEnqueued);
                    break;
                }
            }
        }
        // The items after a failed enqueue were not tried: the queue is full.
        for i in sent..items.len() {
            reports.settle(i, Outcome::QueueFull);
        }
        let deadline = tokio::time::Instant::from_std(start + self.delivery_timeout);
        if reports.unsettled.load(Ordering::Acquire) > 0 {
            let _ = tokio::time::timeout_at(deadline, reports.all_settled.notified()).await;
        }
        let mut failed = 0usize;
        let mut refused = false;
        let mut without_offset = 0usize;
        let results = (0..items.len())
            .map(|i| match reports.outcome(i) {
                Outcome::Acked => Ok(()),
                // A report without an offset is librdkafka's answer to a resent batch the broker
                // called a duplicate: written before, says the broker, but nothing shows where.
                // Apache Kafka answers such a resend with the original offset; tansu 0.6 does not.
                // Acknowledged readings must be in the log, so the item is answered as not
                // delivered: the device sends it again, and if the broker did hold it, the copy
                // lands as `duplicate`.
                Outcome::WithoutOffset => {
                    without_offset += 1;
                    Err(DeliveryFailure::NotDelivered)
                }
                Outcome::Failed => {
                    failed += 1;
                    refused = true;
                    Err(DeliveryFailure::NotDelivered)
                }
                // No report by the deadline: the producer keeps retrying it.
                Outcome::Pending => {
                    failed += 1;
                    Err(DeliveryFailure::NotDelivered)
                }
                Outcome::Dropped | Outcome::NotEnqueued => Err(DeliveryFailure::NotDelivered),
                Outcome::QueueFull => Err(DeliveryFailure::QueueFull),
            })
            .collect();
        if without_offset > 0 {
            metrics::counter!(m::DELIVERED_WITHOUT_OFFSET).increment(without_offset as u64);
            tracing::warn!(
                items = without_offset,
                generation,
                "the broker acknowledged items without an offset (a resent batch it called a \
                 duplicate); answered as not delivered"
            );
        }
        if failed > 0 {
            // Deliveries time out when the broker is gone; stop taking work until a probe succeeds.
            self.broker_up.store(false, Ordering::Relaxed);
            metrics::gauge!(m::BROKER_UP).set(0.0);
        }
        if refused {
            drop(producer);
            self.replace(generation);
        }
        metrics::histogram!(m::PRODUCE_SECONDS).record(start.elapsed().as_secs_f64());
        results
    }

    /// Waits up to `timeout` for queued records to be delivered.
    pub fn flush(&self, timeout: Duration) {
        let (_, producer) = self.current();
        if let Err(e) = producer.flush(timeout) {
            tracing::error!(error = %e, "producer flush incomplete at shutdown");
        }
    }
}

fn create(config: &ClientConfig) -> Result<RawProducer, KafkaError> {
    Ok(Arc::new(config.create_with_context(Reporter)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each record settles once: by its report, or as dropped when librdkafka discards its ticket;
    /// the waiting call is woken when the last one settles, even if it was not waiting yet.
    #[tokio::test]
    async fn every_ticket_settles_once_and_the_last_wakes_the_call() {
        let reports = Reports::new(3);
        let (a, b, c) = (reports.ticket(0), reports.ticket(1), reports.ticket(2));
        a.settle(Outcome::Acked);
        drop(b);
        assert_eq!(reports.unsettled.load(Ordering::Acquire), 1);
        assert_eq!(reports.outcome(2), Outcome::Pending);
        c.settle(Outcome::Failed);
        assert_eq!(reports.unsettled.load(Ordering::Acquire), 0);
        tokio::time::timeout(Duration::from_secs(1), reports.all_settled.notified())
            .await
            .expect("the last settle left a wake-up for the call");
        let outcomes: Vec<Outcome> = (0..3).map(|i| reports.outcome(i)).collect();
        assert_eq!(
            outcomes,
            [Outcome::Acked, Outcome::Dropped, Outcome::Failed]
        );
    }
}
