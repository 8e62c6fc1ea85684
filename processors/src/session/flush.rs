//! Flushing, apart from the consumer loop: a due partition's unit is sealed and written in a task
//! of the session (at most one per partition), and the loop takes each outcome in when it is done.

use std::time::Instant;

use hexpulse_common::fault::Classify;
use hexpulse_common::time::now_ms;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::{Consuming, Kafka, stopped_condition};
use crate::metrics as m;
use crate::partition::{FlushError, Flushed, PartitionWorker, Written};
use crate::reread::seek;

/// A sealed unit's write, done: whose it was and how it went.
pub(super) struct FlushDone {
    partition: i32,
    /// The writer instance of the worker that sealed it: a worker started since (after a revoke
    /// or a fence) does not take a stale outcome in.
    writer: String,
    result: Result<Written, FlushError>,
}

impl Consuming<'_> {
    /// Shutdown: flush and commit what is buffered, within the limit.
    pub(super) async fn finish(&mut self, consumer: &Kafka) {
        let deadline = Instant::now() + self.s.cfg.shutdown_timeout;
        self.settle(consumer, deadline, true).await;
    }

    /// Waits until no unit is in flight (and, with `flush_all`, nothing is buffered either,
    /// flushing what is), or until `deadline`: what is still in flight then is aborted when the
    /// session ends, and its records are read again.
    pub(super) async fn settle(&mut self, consumer: &Kafka, deadline: Instant, flush_all: bool) {
        loop {
            if flush_all {
                let ps: Vec<i32> = self.workers.keys().copied().collect();
                for p in ps {
                    self.start_flush(p);
                }
            }
            let done = match tokio::time::timeout_at(deadline.into(), self.flushes.join_next())
                .await
            {
                Ok(Some(done)) => done,
                Ok(None) => return,
                Err(_) => {
                    tracing::warn!(
                        in_flight = self.flushes.len(),
                        "shutdown limit reached; leaving the rest uncommitted (it will be re-read)"
                    );
                    return;
                }
            };
            self.on_flushed(consumer, done).await;
        }
    }

    /// Seals partition `p`'s unit and writes it in a task of the session ([`Consuming::flushes`]),
    /// unless nothing is buffered or its previous unit is still in flight. The consumer loop goes
    /// on meanwhile: other partitions, this partition's next unit, and the live tier's ticks.
    pub(super) fn start_flush(&mut self, p: i32) {
        let Some(w) = self.workers.get_mut(&p) else {
            return;
        };
        let Some(unit) = w.seal(&self.s.rules.version) else {
            return;
        };
        let writer = unit.writer().to_string();
        self.flushes.spawn(async move {
            FlushDone {
                partition: p,
                writer,
                result: unit.write_retrying().await,
            }
        });
    }

    /// Waits for partition `p`'s unit in flight, taking in whatever other writes finish first.
    /// What every partition buffered goes live first: waiting holds the loop's ticks back. (A
    /// Kafka pause of the partition alone would be finer, but tansu 0.6 answers a fetch that
    /// resumes inside a record batch with the next batch only, which skips records.)
    pub(super) async fn await_flush(&mut self, consumer: &Kafka, p: i32) {
        if self.s.live.is_some() {
            for w in self.workers.values_mut() {
                w.publish_live(&self.s.rules.version);
            }
        }
        while self.workers.get(&p).is_some_and(PartitionWorker::flushing) {
            // At shutdown, `finish` takes over the unit in flight.
            let done = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                done = self.flushes.join_next() => done,
            };
            let Some(done) = done else {
                return;
            };
            self.on_flushed(consumer, done).await;
        }
    }

    /// A unit's write finished. Committed: publish the partition's watermark and commit the
    /// Kafka offset of its first record after the unit. An error that retrying cannot fix (a
    /// permission, a schema, data that does not encode) stops the partition, loudly: it is
    /// dropped uncommitted (its records are read again after a restart), paused, `/readyz` fails
    /// with `partition:{p}`, and `hexpulse_processor_partitions_stopped_total` counts it.
    pub(super) async fn on_flushed(
        &mut self,
        consumer: &Kafka,
        done: Result<FlushDone, tokio::task::JoinError>,
    ) {
        let s = self.s;
        let done = match done {
            Ok(done) => done,
            // Only an abort, which only dropping the session does.
            Err(e) => {
                tracing::error!(error = %e, "a unit's write task ended abnormally");
                return;
            }
        };
        let p = done.partition;
        let Some(w) = self
            .workers
            .get_mut(&p)
            .filter(|w| w.writer() == done.writer)
        else {
            tracing::debug!(
                partition = p,
                "a unit of a worker since dropped finished writing"
            );
            return;
        };
        let written = match done.result {
            Ok(written) => written,
            Err(e) => {
                metrics::counter!(m::FLUSH_ERRORS).increment(1);
                metrics::counter!(m::PARTITIONS_STOPPED).increment(1);
                tracing::error!(
                    partition = p,
                    error = %e,
                    fault = ?e.fault(),
                    "flush failed and retrying cannot fix it: this partition stops until it \
                     is revoked or the processor restarts (its records stay uncommitted and \
                     are read again then)"
                );
                s.health
                    .fail(&stopped_condition(p), format!("flush failed: {e}"));
                s.drop_worker(&mut self.workers, p);
                self.stopped.insert(p);
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&self.topic, p);
                if let Err(e) = consumer.pause(&tpl) {
                    tracing::warn!(partition = p, error = %e, "pausing the partition failed");
                }
                return;
            }
        };
        let flushed = w.written(&written);
        let again = w.should_flush(self.roll);
        match flushed {
            // A written unit always had rows: only `flush` of an empty buffer answers `Empty`.
            Flushed::Empty => {}
            Flushed::Committed { next_offset, rows } => {
                // The Kafka offset is committed at the offset of the partition's next record: the
                // first one buffered since, or else the next that arrives. `next_offset` itself
                // may lie in an offset gap, where tansu's fetches stall.
                match w.buffered_from() {
                    Some(first) => commit_offset(consumer, &self.topic, p, first),
                    None => w.commit_pending = true,
                }
                // A partition stopped in an earlier session of this process works again.
                s.health.clear(&stopped_condition(p));
                if let Err(e) = w.publish_watermark(written.watermark_ms).await {
                    tracing::warn!(partition = p, error = %e, "writing the watermark failed");
                }
                let wm = written.watermark_ms;
                metrics::gauge!(m::WATERMARK_MS, "partition" => p.to_string()).set(wm as f64);
                metrics::gauge!(m::LAG_MS, "partition" => p.to_string())
                    .set((now_ms() - wm).max(0) as f64);
                tracing::debug!(partition = p, next_offset, rows, "unit committed");
                if again {
                    // The next unit filled up (or aged) while this one was written.
                    self.start_flush(p);
                }
            }
            Flushed::Fenced { next_offset } => {
                s.drop_worker(&mut self.workers, p);
                // The next record re-initialises the worker (and re-reads if the broker skipped).
                seek(consumer, &self.topic, p, next_offset);
            }
        }
    }
}

/// Commits the partition's Kafka offset: everything before `offset` is claimed and published.
pub(super) fn commit_offset(consumer: &Kafka, topic: &str, p: i32, offset: i64) {
    let started = Instant::now();
    let mut tpl = TopicPartitionList::new();
    let _ = tpl.add_partition_offset(topic, p, Offset::Offset(offset));
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        // Harmless: the claim chain, not the Kafka offset, says where to resume.
        tracing::debug!(partition = p, error = %e, "offset commit failed");
    }
    metrics::histogram!(m::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
}
