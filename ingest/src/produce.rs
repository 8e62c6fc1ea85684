//! The Kafka side of ingest: durable produce of accepted items, and broker reachability.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hexpulse_common::kafka::KafkaConfig;
use hexpulse_schemas::wire::envelope;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
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

/// Idempotent, acks=all producer of raw readings.
///
/// After a failed delivery the producer is replaced by a new one (a new producer id): librdkafka
/// bumps an idempotent producer's epoch itself after such a failure, and tansu 0.6 cannot take a
/// produce with an epoch it did not hand out (ARCHITECTURE.md, tansu behaviours). The old one's
/// queue is purged when it is dropped; its items were, or will be, answered as not delivered.
#[derive(Clone)]
pub struct Sink {
    /// The current producer and its generation.
    producer: Arc<RwLock<(u64, FutureProducer)>>,
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
            producer: Arc::new(RwLock::new((0, cc.create()?))),
            config: cc,
            topic: kafka.raw_topic.clone(),
            node: cfg.node_name.clone(),
            envelope_key: kafka.envelope_key().map_err(KafkaError::ClientCreation)?,
            broker_up: Arc::new(AtomicBool::new(false)),
            delivery_timeout: cfg.delivery_timeout,
        })
    }

    fn current(&self) -> (u64, FutureProducer) {
        self.producer.read().expect("producer lock").clone()
    }

    /// Replaces generation `failed` of the producer with a new one, unless that happened already.
    fn replace(&self, failed: u64) {
        let fresh = match self.config.create::<FutureProducer>() {
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
        let mut pending = Vec::with_capacity(items.len());
        let mut results = vec![Err(DeliveryFailure::QueueFull); items.len()];
        let (generation, producer) = self.current();
        for (i, (key, value)) in items.iter().enumerate() {
            let value =
                envelope::encode(received_ms, &self.node, value, self.envelope_key.as_ref());
            let record = FutureRecord::to(&self.topic)
                .key(key.as_ref())
                .payload(&value);
            match producer.send_result(record) {
                Ok(fut) => pending.push((i, fut)),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => break,
                Err((e, _)) => {
                    tracing::warn!(error = %e, "enqueue failed");
                    results[i] = Err(DeliveryFailure::NotDelivered);
                    break;
                }
            }
        }
        let deadline = tokio::time::Instant::from_std(start + self.delivery_timeout);
        let mut failed = 0usize;
        let mut refused = false;
        let mut without_offset = 0usize;
        for (i, fut) in pending {
            results[i] = match tokio::time::timeout_at(deadline, fut).await {
                // A report without an offset is librdkafka's answer to a resent batch the broker
                // called a duplicate: written before, says the broker, but nothing shows where.
                // Apache Kafka answers such a resend with the original offset; tansu 0.6 does not.
                // Acknowledged readings must be in the log, so the item is answered as not
                // delivered: the device sends it again, and if the broker did hold it, the copy
                // lands as `duplicate`.
                Ok(Ok(Ok(delivery))) if delivery.offset < 0 => {
                    without_offset += 1;
                    Err(DeliveryFailure::NotDelivered)
                }
                Ok(Ok(Ok(_))) => Ok(()),
                Ok(Ok(Err((e, _)))) => {
                    failed += 1;
                    refused = true;
                    tracing::debug!(error = %e, "delivery failed");
                    Err(DeliveryFailure::NotDelivered)
                }
                Ok(Err(_cancelled)) => Err(DeliveryFailure::NotDelivered),
                Err(_elapsed) => {
                    failed += 1;
                    Err(DeliveryFailure::NotDelivered)
                }
            };
        }
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
