//! One group membership of the consumer loop: subscribe, turn records into units, flush and commit
//! them, and flush what is buffered at shutdown. [`consume_session`] drives a [`Consuming`], whose
//! methods are the loop's steps.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hexpulse_common::time::now_ms;
use hexpulse_schemas::wire::envelope;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::partition::{PartitionWorker, Roll};
use crate::reread::{
    OrphanWatch, REREAD_WINDOW, Reread, RereadStep, SILENT_AFTER, committed_offset,
    partition_count, seek,
};
use crate::run::{ProcessError, Shared};
use crate::validate::Validator;

mod flush;
use flush::{FlushDone, commit_offset};

/// Records partitions taken away by a rebalance, for the loop to drop their state, and counts
/// completed rebalances (a join the group never answers shows as none).
#[derive(Default, Clone)]
pub(crate) struct RebalanceCtx {
    revoked: Arc<Mutex<Vec<i32>>>,
    rebalances: Arc<AtomicU64>,
    /// Partitions assigned by the last rebalance.
    assigned: Arc<Mutex<Vec<i32>>>,
}

impl ClientContext for RebalanceCtx {}

impl ConsumerContext for RebalanceCtx {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut r = self.revoked.lock().expect("lock");
            r.extend(tpl.elements().iter().map(|e| e.partition()));
            self.assigned.lock().expect("lock").clear();
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        if let Rebalance::Assign(tpl) = rebalance {
            let ps: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(partitions = ?ps, "partitions assigned");
            *self.assigned.lock().expect("lock") = ps;
        }
    }
}

type Kafka = StreamConsumer<RebalanceCtx>;

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// At shutdown, after flushing.
    Stopped,
    /// The group lost track of this member (or of a partition): join again with a new consumer.
    Rejoin,
}

/// One group membership: subscribe, process assigned partitions, flush on shutdown.
///
/// If the group completes no rebalance within `join_patience` of subscribing, the join is stuck
/// (seen with tansu after members were SIGKILLed: the new member waits for minutes). The session
/// then ends with [`Ended::Rejoin`] and a new consumer joins, as a supervisor's restart would.
/// A member that got an assignment, even an empty one, is never cycled, so idle spare processors
/// cause no rebalances.
pub(crate) async fn consume_session(
    s: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> Result<Ended, ProcessError> {
    let group = RebalanceCtx::default();
    let session_ms = s.cfg.session_timeout.as_millis().max(1000);
    let consumer: Kafka = s
        .kafka
        .consumer_config(&s.cfg.group_id, "hexpulse-processor")
        .set("session.timeout.ms", session_ms.to_string())
        .set("heartbeat.interval.ms", (session_ms / 4).to_string())
        // Also the rebalance timeout the group waits for members to rejoin: keep it short, or a
        // crashed member stalls the whole group (seen with tansu) for the default five minutes.
        .set("max.poll.interval.ms", (session_ms * 2).to_string())
        .create_with_context(group.clone())?;
    consumer.subscribe(&[&s.kafka.raw_topic])?;
    let mut c = Consuming::new(s, shutdown, group);
    let mut every = s.cfg.roll_age / 2;
    if s.live.is_some() {
        every = every.min(s.cfg.live.interval);
    }
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(20)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    {
        let mut stream = consumer.stream();
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = c.flushes.join_next() => {
                    c.on_flushed(&consumer, done).await;
                    continue;
                }
                _ = tick.tick() => None,
                m = stream.next() => m,
            };
            c.forget_revoked();
            match msg {
                Some(Ok(msg)) => c.on_record(&consumer, &msg).await?,
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None => {
                    if c.lost(&consumer).await {
                        // What is written already is kept: let the units in flight land.
                        c.settle(&consumer, Instant::now() + s.cfg.shutdown_timeout, false)
                            .await;
                        drop(stream);
                        // Closing a consumer talks to the coordinator; keep that off the async
                        // workers.
                        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
                        return Ok(Ended::Rejoin);
                    }
                    c.reread_silent(&consumer);
                    c.on_tick().await;
                }
            }
        }
    }
    c.finish(&consumer).await;
    tracing::info!("processor stopped");
    Ok(Ended::Stopped)
}

/// The state of one session: a worker per partition with records, and what the recovery from
/// the broker's and the group's failures tracks.
struct Consuming<'a> {
    s: &'a Arc<Shared>,
    shutdown: &'a CancellationToken,
    group: RebalanceCtx,
    topic: String,
    roll: Roll,
    subscribed: Instant,
    join_patience: Duration,
    workers: HashMap<i32, PartitionWorker>,
    /// Per partition: records pushed at the last change, when that was, and the last idle write.
    activity: HashMap<i32, (u64, Instant, Option<Instant>)>,
    /// Re-reads under way (see [`Reread`]).
    rereads: HashMap<i32, Reread>,
    /// Partitions assigned but silent: since when, and how far back the next re-read goes.
    silent: HashMap<i32, (Instant, i64)>,
    orphans: OrphanWatch,
    /// Partitions stopped by a flush error that retrying cannot fix (see
    /// [`Consuming::on_flushed`]): paused until they are revoked or the processor restarts.
    stopped: HashSet<i32>,
    /// The units being written, at most one per partition ([`Consuming::start_flush`]). Owned by
    /// the session: ending it aborts what is still in flight (its records are read again).
    flushes: JoinSet<FlushDone>,
}

impl<'a> Consuming<'a> {
    fn new(s: &'a Arc<Shared>, shutdown: &'a CancellationToken, group: RebalanceCtx) -> Self {
        Consuming {
            s,
            shutdown,
            group,
            topic: s.kafka.raw_topic.clone(),
            roll: Roll {
                rows: s.cfg.roll_rows,
                bytes: s.cfg.roll_bytes,
                age: s.cfg.roll_age,
            },
            subscribed: Instant::now(),
            join_patience: (s.cfg.session_timeout * 4).max(Duration::from_secs(10)),
            workers: HashMap::new(),
            activity: HashMap::new(),
            rereads: HashMap::new(),
            silent: HashMap::new(),
            orphans: OrphanWatch::new(s.cfg.session_timeout * 3),
            stopped: HashSet::new(),
            flushes: JoinSet::new(),
        }
    }

    /// Drops the state of partitions a rebalance took away.
    fn forget_revoked(&mut self) {
        for p in std::mem::take(&mut *self.group.revoked.lock().expect("lock")) {
            self.rereads.remove(&p);
            self.silent.remove(&p);
            if self.stopped.remove(&p) {
                self.s.health.clear(&stopped_condition(p));
            }
            if self.s.drop_worker(&mut self.workers, p) {
                tracing::info!(
                    partition = p,
                    "partition revoked; dropping its uncommitted unit"
                );
            }
        }
    }

    /// One record: start its partition's worker (resuming at the chain end in the lake), follow
    /// a re-read, commit the offset of what is published, and push the record into the unit.
    async fn on_record(
        &mut self,
        consumer: &Kafka,
        msg: &BorrowedMessage<'_>,
    ) -> Result<(), ProcessError> {
        let (p, offset) = (msg.partition(), msg.offset());
        if self.stopped.contains(&p) {
            // Fetched before the pause took effect.
            return Ok(());
        }
        let value = msg.payload().unwrap_or_default();
        let record_ms = msg.timestamp().to_millis().unwrap_or(0);
        self.silent.remove(&p);
        let topic = self.topic.as_str();
        if let std::collections::hash_map::Entry::Vacant(e) = self.workers.entry(p) {
            // Resume at the end of the chain in the lake's log, never from whatever offset
            // happened to arrive first. The receive time starts the worker (which reads the
            // envelope again for every record, checked).
            let recv = envelope::decode(value).map_or(record_ms, |e| e.received_ms);
            let partitions = partition_count(consumer, topic).unwrap_or(self.s.kafka.partitions);
            let w = init_worker(self.s, topic, p, recv, partitions).await?;
            let resume = w.next_offset();
            e.insert(w);
            if offset > resume {
                // Records past the chain end: a gap in the log, or records the broker skipped.
                // Only reading the log from before the chain end tells which.
                let r = Reread::start(resume);
                tracing::info!(
                    partition = p,
                    offset,
                    resume,
                    from = r.from,
                    "first record is past the chain end; re-reading from before it"
                );
                seek(consumer, topic, p, r.from);
                self.rereads.insert(p, r);
                return Ok(());
            }
        } else if let Some(r) = self.rereads.get_mut(&p) {
            match r.next(offset) {
                RereadStep::Reached => {
                    self.rereads.remove(&p);
                }
                RereadStep::Gap => {
                    tracing::info!(
                        partition = p,
                        offset,
                        resume = r.expect,
                        "offset gap confirmed from the start of the log"
                    );
                    self.rereads.remove(&p);
                }
                RereadStep::Again(from) => {
                    seek(consumer, topic, p, from);
                    return Ok(());
                }
            }
        }
        let w = self.workers.get_mut(&p).expect("inserted above");
        if w.commit_pending && !w.already_done(offset) {
            // Everything before this record is claimed and published.
            w.commit_pending = false;
            commit_offset(consumer, topic, p, offset);
        }
        if w.already_done(offset) {
            return Ok(());
        }
        w.push(offset, value, record_ms);
        if w.is_full(self.roll) {
            if !w.flushing() {
                self.start_flush(p);
            } else if w.is_full(self.roll.twice()) {
                // The lake is slower than the stream: wait for the unit in flight rather than
                // buffer without bound.
                self.await_flush(consumer, p).await;
                self.start_flush(p);
            }
        }
        Ok(())
    }

    /// Whether this member must join the group again: its join went unanswered, or a partition
    /// with records waiting is processed by no live member.
    async fn lost(&mut self, consumer: &Kafka) -> bool {
        let joined = self.group.rebalances.load(Ordering::Relaxed) > 0;
        if !joined && self.subscribed.elapsed() > self.join_patience {
            tracing::warn!(
                waited = ?self.subscribed.elapsed(),
                "the group has not answered this member's join; leaving and joining again"
            );
            return true;
        }
        // A partition no live member processes (its owner was killed and the group did not
        // hand it on): join again, so that a rebalance assigns it. Only once this session's join
        // has been answered (an assignment, even an empty one).
        let mine = self.group.assigned.lock().expect("lock").clone();
        if joined
            && let Some(p) = self
                .orphans
                .orphaned(self.s, consumer, &self.topic, &mine)
                .await
        {
            tracing::warn!(
                partition = p,
                "a partition with records waiting has not advanced in the lake and is not \
                 assigned here; joining the group again so that a rebalance hands it on"
            );
            metrics::counter!(m::REJOINS_ORPHANED_TOTAL).increment(1);
            return true;
        }
        false
    }

    /// Assigned partitions that stay silent may sit at a committed offset inside a record batch:
    /// tansu 0.6 answers such a fetch with the next batch only, so with no next batch nothing
    /// ever arrives. Re-read from before the committed offset (growing the distance each time)
    /// until a record shows up or the start of the log is reached.
    fn reread_silent(&mut self, consumer: &Kafka) {
        let now = Instant::now();
        for p in self.group.assigned.lock().expect("lock").clone() {
            if self.workers.contains_key(&p)
                || self.rereads.contains_key(&p)
                || self.stopped.contains(&p)
            {
                continue;
            }
            let (since, window) = self.silent.entry(p).or_insert((now, REREAD_WINDOW));
            if since.elapsed() < SILENT_AFTER || *window == 0 {
                continue;
            }
            match committed_offset(consumer, &self.topic, p) {
                Ok(Some(c)) if c > 0 => {
                    let from = (c - *window).max(0);
                    tracing::info!(
                        partition = p,
                        committed = c,
                        from,
                        "assigned partition is silent; re-reading from before its committed offset"
                    );
                    seek(consumer, &self.topic, p, from);
                    *window = if from == 0 { 0 } else { *window * 4 };
                }
                // Nothing committed: the fetch starts at the start of the log.
                Ok(_) => *window = 0,
                // Asked again after SILENT_AFTER: one failed lookup must not leave the partition
                // silent for good.
                Err(e) => {
                    tracing::debug!(partition = p, error = %e, "committed offset lookup failed")
                }
            }
            *since = now;
        }
    }

    /// A tick (or the stream paused): rows validated since the last tick go live, units that are
    /// old enough flush, idle watermarks advance.
    async fn on_tick(&mut self) {
        if self.s.live.is_some() {
            for w in self.workers.values_mut() {
                w.publish_live(&self.s.rules.version);
            }
        }
        let due: Vec<i32> = self
            .workers
            .iter()
            .filter(|(_, w)| w.should_flush(self.roll))
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            self.start_flush(p);
        }
        self.advance_idle_watermarks().await;
    }

    /// A partition with nothing new for `idle_after` has everything up to now minus `idle_after`
    /// (ingest produces within its delivery timeout): advance its watermark.
    async fn advance_idle_watermarks(&mut self) {
        let idle_after = self.s.cfg.epoch.idle_after;
        if idle_after.is_zero() {
            return;
        }
        for (p, w) in self.workers.iter_mut() {
            let a = self
                .activity
                .entry(*p)
                .or_insert((w.pushed, Instant::now(), None));
            if a.0 != w.pushed {
                *a = (w.pushed, Instant::now(), a.2);
                continue;
            }
            let quiet = a.1.elapsed() >= idle_after;
            let due = a.2.is_none_or(|t| t.elapsed() >= idle_after / 2);
            if quiet && due && w.buffered() == 0 && !w.flushing() {
                w.watermark_ms = w.watermark_ms.max(now_ms() - idle_after.as_millis() as i64);
                a.2 = Some(Instant::now());
                if let Err(e) = w.publish_watermark(w.watermark_ms).await {
                    tracing::debug!(partition = p, error = %e, "idle watermark write failed");
                }
            }
        }
    }
}

/// The readiness condition of a stopped partition.
fn stopped_condition(p: i32) -> String {
    format!("partition:{p}")
}

/// `partitions`: the raw topic's partition count (for the placement check of re-verification).
async fn init_worker(
    s: &Shared,
    topic: &str,
    p: i32,
    recv: i64,
    partitions: i32,
) -> Result<PartitionWorker, ProcessError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let validator = Validator::new(
            s.rules.clone(),
            s.registry.clone(),
            s.cfg.reverify_signatures,
        )
        .with_sealed(s.sealed.clone())
        .with_envelope_key(s.envelope_key.clone())
        .with_partitions(partitions);
        match PartitionWorker::init(
            topic,
            p,
            recv,
            s.lake.clone(),
            validator,
            s.binner.clone(),
            s.cfg.h3_resolutions.clone(),
        )
        .await
        {
            Ok(w) => {
                return Ok(match &s.live {
                    Some(live) => w.with_live(live.clone()),
                    None => w,
                });
            }
            Err(e) => {
                tracing::warn!(partition = p, error = %e, ?backoff, "partition init failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
