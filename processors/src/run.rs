//! The processor's consumer loop, its HTTP endpoints and its shutdown.

use hexpulse_common::time::now_ms;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hexpulse_common::kafka::KafkaConfig;
use hexpulse_common::registry::Registry;
use hexpulse_schemas::wire::envelope::{self, EnvelopeKey};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::ProcessConfig;
use crate::h3bin::Binner;
use crate::live::LiveStore;
use crate::metrics as m;
use crate::partition::{Flushed, PartitionWorker, Roll};
use crate::validate::Validator;
use hexpulse_lake::Lake;
use hexpulse_lake::rules::Rules;
use hexpulse_lake::unit::STREAM_TABLES;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("lake: {0}")]
    Lake(#[from] hexpulse_lake::LakeError),
    #[error("rules: {0}")]
    Rules(#[from] hexpulse_lake::rules::RulesError),
    #[error("{0}")]
    Config(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Records partitions taken away by a rebalance, for the loop to drop their state, and counts
/// completed rebalances (a join the group never answers shows as none).
#[derive(Default, Clone)]
struct RebalanceCtx {
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

/// A started processor.
pub struct Running {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<Result<(), ProcessError>>,
}

struct Shared {
    cfg: ProcessConfig,
    kafka: KafkaConfig,
    lake: Lake,
    rules: Rules,
    registry: Registry,
    binner: Binner,
    sealed: Arc<hexpulse_lake::epoch::SealedEpochs>,
    envelope_key: Option<EnvelopeKey>,
    live: Option<Arc<LiveStore>>,
}

impl Shared {
    /// Forgets partition `p`'s worker and its live rows.
    fn drop_worker(&self, workers: &mut HashMap<i32, PartitionWorker>, p: i32) -> bool {
        if let Some(live) = &self.live {
            live.remove(p);
        }
        workers.remove(&p).is_some()
    }
}

/// `GET /v1/live/{table}?instance=I&since=S`: the live rows of a stream table
/// ([`hexpulse_lake::live`] describes the answer).
async fn live_rows(
    axum::extract::State(live): axum::extract::State<Arc<LiveStore>>,
    axum::extract::Path(table): axum::extract::Path<String>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let Some(index) = hexpulse_lake::unit::stream_table_index(&table) else {
        return (StatusCode::NOT_FOUND, format!("no stream table {table:?}")).into_response();
    };
    let since = match q.get("since").map(|s| s.parse::<u64>()) {
        None => 0,
        Some(Ok(s)) => s,
        Some(Err(_)) => {
            return (StatusCode::BAD_REQUEST, "since: a segment number").into_response();
        }
    };
    let (schema, header, batches) = live.read(index, q.get("instance").map(String::as_str), since);
    match hexpulse_lake::live::encode(&schema, &header, &batches) {
        Ok(body) => (
            [(header::CONTENT_TYPE, hexpulse_lake::live::MEDIA_TYPE)],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Starts the consumer loop and the HTTP endpoints; stops (flushing and committing) on `shutdown`.
pub async fn start(
    cfg: ProcessConfig,
    kafka: KafkaConfig,
    registry: Registry,
    lake: Lake,
    shutdown: CancellationToken,
) -> Result<Running, ProcessError> {
    let rules = Rules::load(cfg.rules_path.as_deref())?;
    let envelope_key = kafka.envelope_key().map_err(ProcessError::Config)?;
    if cfg.reverify_signatures && envelope_key.is_none() {
        tracing::warn!(
            "reverify_signatures is on without [kafka] envelope_key: a record produced around \
             ingest can still claim any receive time"
        );
    }
    let binner =
        Binner::new(&cfg.h3_resolutions).map_err(|e| ProcessError::Config(e.to_string()))?;
    if let Err(e) = kafka.ensure_topics(&[&kafka.raw_topic]).await {
        tracing::warn!(error = %e, "could not ensure the raw topic exists");
    }
    let handle = hexpulse_common::telemetry::metrics_handle();
    let live = (!cfg.live.interval.is_zero()).then(|| {
        Arc::new(LiveStore::new(
            &kafka.raw_topic,
            cfg.live.retention,
            cfg.live.memory_bytes,
            STREAM_TABLES.map(|t| {
                hexpulse_lake::live::with_partition_fields(&crate::partition::table_schema(
                    t,
                    &cfg.h3_resolutions,
                ))
            }),
        ))
    });
    let mut app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(move || std::future::ready(handle.render())),
        );
    if let Some(live) = &live {
        app = app.merge(
            axum::Router::new()
                .route("/v1/live/{table}", axum::routing::get(live_rows))
                .with_state(live.clone()),
        );
    }
    let addr = hexpulse_common::http::serve_in_background(cfg.listen, app, shutdown.clone())
        .await
        .map_err(|source| ProcessError::Bind {
            addr: cfg.listen,
            source,
        })?;
    tracing::info!(%addr, lake = %cfg.lake_url, rules = %rules.version, "processor starting");
    if !cfg.compact_interval.is_zero() {
        let close_after =
            rules.time.allowed_lateness + rules.time.max_future_skew + cfg.compact_grace;
        tokio::spawn(hexpulse_lake::compact::run_compactor(
            lake.clone(),
            cfg.compact_interval,
            close_after,
            hexpulse_lake::compact::CompactOptions {
                target_bytes: cfg.compact_target_bytes,
                memory_bytes: cfg.compact_memory_bytes,
                retention: cfg.compact_retention,
            },
            shutdown.clone(),
        ));
    }
    let sealed = Arc::new(
        hexpulse_lake::epoch::SealedEpochs::new(cfg.epoch.clone())
            .map_err(|e| ProcessError::Config(e.to_string()))?,
    );
    if let Err(e) = sealed.refresh(&lake).await {
        tracing::warn!(error = %e, "could not read the sealed epochs yet");
    }
    {
        // Learn of epochs sealed elsewhere (another processor, `hexpulse seal`).
        let (sealed, lake, stop) = (sealed.clone(), lake.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
                if let Err(e) = sealed.refresh(&lake).await {
                    tracing::debug!(error = %e, "refreshing sealed epochs failed");
                }
            }
        });
    }
    if !cfg.epoch.seal_interval.is_zero() {
        tokio::spawn(hexpulse_lake::epoch::seal::run_sealer(
            lake.clone(),
            cfg.epoch.clone(),
            rules.clone(),
            kafka.raw_topic.clone(),
            kafka.partitions,
            sealed.clone(),
            shutdown.clone(),
        ));
    }
    let shared = Arc::new(Shared {
        cfg,
        kafka,
        lake,
        rules,
        registry,
        binner,
        sealed,
        envelope_key,
        live,
    });
    let task = tokio::spawn(consume(shared, shutdown));
    Ok(Running { addr, task })
}

/// Runs a processor until `shutdown`.
pub async fn run(
    cfg: ProcessConfig,
    kafka: KafkaConfig,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), ProcessError> {
    let lake = Lake::open(&cfg.lake_url)?;
    let running = start(cfg, kafka, registry, lake, shutdown).await?;
    running
        .task
        .await
        .unwrap_or_else(|e| Err(ProcessError::Config(format!("processor task failed: {e}"))))
}

/// Consumes until `shutdown`, joining the group again whenever a join goes unanswered.
async fn consume(s: Arc<Shared>, shutdown: CancellationToken) -> Result<(), ProcessError> {
    while consume_session(&s, &shutdown).await? == Session::Rejoin {
        metrics::counter!(m::REJOINS_TOTAL).increment(1);
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Session {
    Stopped,
    Rejoin,
}

/// One group membership: subscribe, process assigned partitions, flush on shutdown.
///
/// If the group completes no rebalance within `join_patience` of subscribing, the join is stuck
/// (seen with tansu after members were SIGKILLed: the new member waits for minutes). The session
/// then ends with [`Session::Rejoin`] and a new consumer joins, as a supervisor's restart would.
/// A member that got an assignment, even an empty one, is never cycled, so idle spare processors
/// cause no rebalances.
async fn consume_session(
    s: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> Result<Session, ProcessError> {
    let ctx = RebalanceCtx::default();
    let revoked = ctx.revoked.clone();
    let rebalances = ctx.rebalances.clone();
    let assigned = ctx.assigned.clone();
    let session_ms = s.cfg.session_timeout.as_millis().max(1000);
    let consumer: StreamConsumer<RebalanceCtx> = s
        .kafka
        .consumer_config(&s.cfg.group_id, "hexpulse-processor")
        .set("session.timeout.ms", session_ms.to_string())
        .set("heartbeat.interval.ms", (session_ms / 4).to_string())
        // Also the rebalance timeout the group waits for members to rejoin: keep it short, or a
        // crashed member stalls the whole group (seen with tansu) for the default five minutes.
        .set("max.poll.interval.ms", (session_ms * 2).to_string())
        .create_with_context(ctx)?;
    consumer.subscribe(&[&s.kafka.raw_topic])?;
    let subscribed = Instant::now();
    let join_patience = (s.cfg.session_timeout * 4).max(Duration::from_secs(10));
    let roll = Roll {
        rows: s.cfg.roll_rows,
        bytes: s.cfg.roll_bytes,
        age: s.cfg.roll_age,
    };
    let mut workers: HashMap<i32, PartitionWorker> = HashMap::new();
    let mut every = s.cfg.roll_age / 2;
    if s.live.is_some() {
        every = every.min(s.cfg.live.interval);
    }
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(20)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let topic = s.kafka.raw_topic.clone();
    let idle_after = s.cfg.epoch.idle_after;
    // Per partition: records pushed at the last change, when that was, and the last idle write.
    let mut activity: HashMap<i32, (u64, Instant, Option<Instant>)> = HashMap::new();
    // Re-reads under way, and partitions assigned but silent (see `Reread`).
    let mut rereads: HashMap<i32, Reread> = HashMap::new();
    let mut silent: HashMap<i32, (Instant, i64)> = HashMap::new();
    let mut orphans = OrphanWatch::new(s.cfg.session_timeout * 3);
    {
        let mut stream = consumer.stream();
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => None,
                m = stream.next() => m,
            };
            for p in std::mem::take(&mut *revoked.lock().expect("lock")) {
                rereads.remove(&p);
                silent.remove(&p);
                if s.drop_worker(&mut workers, p) {
                    tracing::info!(
                        partition = p,
                        "partition revoked; dropping its uncommitted unit"
                    );
                }
            }
            if let Some(msg) = msg {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        continue;
                    }
                };
                let (p, offset) = (msg.partition(), msg.offset());
                let value = msg.payload().unwrap_or_default();
                let record_ms = msg.timestamp().to_millis().unwrap_or(0);
                silent.remove(&p);
                if let std::collections::hash_map::Entry::Vacant(e) = workers.entry(p) {
                    // Resume at the end of the chain in the lake's log, never from whatever offset
                    // happened to arrive first. The receive time starts the worker (which reads
                    // the envelope again for every record, checked).
                    let recv = envelope::decode(value).map_or(record_ms, |e| e.received_ms);
                    let partitions =
                        partition_count(&consumer, &topic).unwrap_or(s.kafka.partitions);
                    let w = init_worker(s, &topic, p, recv, partitions).await?;
                    let resume = w.next_offset();
                    e.insert(w);
                    if offset > resume {
                        // Records past the chain end: a gap in the log, or records the broker
                        // skipped. Only reading the log from before the chain end tells which.
                        let r = Reread::start(resume);
                        tracing::info!(
                            partition = p,
                            offset,
                            resume,
                            from = r.from,
                            "first record is past the chain end; re-reading from before it"
                        );
                        seek(&consumer, &topic, p, r.from);
                        rereads.insert(p, r);
                        continue;
                    }
                } else if let Some(r) = rereads.get_mut(&p) {
                    match r.next(offset) {
                        RereadStep::Reached => {
                            rereads.remove(&p);
                        }
                        RereadStep::Gap => {
                            tracing::info!(
                                partition = p,
                                offset,
                                resume = r.expect,
                                "offset gap confirmed from the start of the log"
                            );
                            rereads.remove(&p);
                        }
                        RereadStep::Again(from) => {
                            seek(&consumer, &topic, p, from);
                            continue;
                        }
                    }
                }
                let w = workers.get_mut(&p).expect("inserted above");
                if w.commit_pending && !w.already_done(offset) {
                    // Everything before this record is claimed and published.
                    w.commit_pending = false;
                    let started = Instant::now();
                    let mut tpl = TopicPartitionList::new();
                    let _ = tpl.add_partition_offset(&topic, p, Offset::Offset(offset));
                    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                        // Harmless: the claim chain, not the Kafka offset, says where to resume.
                        tracing::debug!(partition = p, error = %e, "offset commit failed");
                    }
                    metrics::histogram!(m::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
                }
                if w.already_done(offset) {
                    continue;
                }
                w.push(offset, value, record_ms);
                if w.is_full(roll) {
                    flush_partition(s, &consumer, &mut workers, p, shutdown).await;
                }
                continue;
            }
            if rebalances.load(Ordering::Relaxed) == 0 && subscribed.elapsed() > join_patience {
                tracing::warn!(
                    waited = ?subscribed.elapsed(),
                    "the group has not answered this member's join; leaving and joining again"
                );
                drop(stream);
                // Closing a consumer talks to the coordinator; keep that off the async workers.
                let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
                return Ok(Session::Rejoin);
            }
            // A partition no live member processes (its owner was killed and the group did not
            // hand it on): join again, so that a rebalance assigns it.
            // Only once this session's join has been answered (an assignment, even an empty one).
            let mine = assigned.lock().expect("lock").clone();
            let joined = rebalances.load(Ordering::Relaxed) > 0;
            if joined && let Some(p) = orphans.orphaned(s, &consumer, &topic, &mine).await {
                tracing::warn!(
                    partition = p,
                    "a partition with records waiting has not advanced in the lake and is not \
                     assigned here; joining the group again so that a rebalance hands it on"
                );
                metrics::counter!(m::REJOINS_ORPHANED_TOTAL).increment(1);
                drop(stream);
                let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
                return Ok(Session::Rejoin);
            }
            // Assigned partitions that stay silent may sit at a committed offset inside a record
            // batch: tansu 0.6 answers such a fetch with the next batch only, so with no next
            // batch nothing ever arrives. Re-read from before the committed offset (growing the
            // distance each time) until a record shows up or the start of the log is reached.
            let now = Instant::now();
            for p in assigned.lock().expect("lock").clone() {
                if workers.contains_key(&p) || rereads.contains_key(&p) {
                    continue;
                }
                let (since, window) = silent.entry(p).or_insert((now, REREAD_WINDOW));
                if since.elapsed() < SILENT_AFTER || *window == 0 {
                    continue;
                }
                match committed_offset(&consumer, &topic, p) {
                    Ok(Some(c)) if c > 0 => {
                        let from = (c - *window).max(0);
                        tracing::info!(
                            partition = p,
                            committed = c,
                            from,
                            "assigned partition is silent; re-reading from before its committed offset"
                        );
                        seek(&consumer, &topic, p, from);
                        *window = if from == 0 { 0 } else { *window * 4 };
                    }
                    // Nothing committed: the fetch starts at the start of the log.
                    Ok(_) => *window = 0,
                    // Asked again after SILENT_AFTER: one failed lookup must not leave the
                    // partition silent for good.
                    Err(e) => {
                        tracing::debug!(partition = p, error = %e, "committed offset lookup failed")
                    }
                }
                *since = now;
            }
            // A tick (or the stream paused): rows validated since the last tick go live, units
            // that are old enough flush, idle watermarks advance.
            if s.live.is_some() {
                for w in workers.values_mut() {
                    w.publish_live(&s.rules.version);
                }
            }
            let due: Vec<i32> = workers
                .iter()
                .filter(|(_, w)| w.should_flush(roll))
                .map(|(p, _)| *p)
                .collect();
            for p in due {
                flush_partition(s, &consumer, &mut workers, p, shutdown).await;
            }
            if !idle_after.is_zero() {
                // A partition with nothing new for `idle_after` has everything up to now minus
                // `idle_after` (ingest produces within its delivery timeout): advance its watermark.
                for (p, w) in workers.iter_mut() {
                    let a = activity
                        .entry(*p)
                        .or_insert((w.pushed, Instant::now(), None));
                    if a.0 != w.pushed {
                        *a = (w.pushed, Instant::now(), a.2);
                        continue;
                    }
                    let quiet = a.1.elapsed() >= idle_after;
                    let due = a.2.is_none_or(|t| t.elapsed() >= idle_after / 2);
                    if quiet && due && w.buffered() == 0 {
                        w.watermark_ms =
                            w.watermark_ms.max(now_ms() - idle_after.as_millis() as i64);
                        a.2 = Some(Instant::now());
                        if let Err(e) = w.publish_watermark().await {
                            tracing::debug!(partition = p, error = %e, "idle watermark write failed");
                        }
                    }
                }
            }
        }
    }
    // Shutdown: flush and commit what is buffered, within the limit.
    let ps: Vec<i32> = workers.keys().copied().collect();
    let deadline = Instant::now() + s.cfg.shutdown_timeout;
    let never = CancellationToken::new();
    for p in ps {
        if Instant::now() >= deadline {
            tracing::warn!(
                "shutdown limit reached; leaving the rest uncommitted (it will be re-read)"
            );
            break;
        }
        let _ = tokio::time::timeout_at(
            deadline.into(),
            flush_partition(s, &consumer, &mut workers, p, &never),
        )
        .await;
    }
    tracing::info!("processor stopped");
    Ok(Session::Stopped)
}

/// How far before the chain end the first re-read starts; each retry reads four times as far.
const REREAD_WINDOW: i64 = 1024;
/// An assigned partition with no record for this long is re-read from before its committed offset.
const SILENT_AFTER: Duration = Duration::from_secs(3);

/// A re-read that proves whether records between the chain end and the first record received exist.
///
/// Real Kafka serves a fetch from any offset. tansu 0.6 answers a fetch from an offset inside a
/// record batch with the *next* batch, so a consumer resuming at a committed offset inside a batch
/// silently skips the rest of that batch (measured: fetching from 300 returned 392 first, where
/// 300..391 were records). The re-read seeks to `from`, some way before the chain end `expect`,
/// and widens the distance until a record at or before `expect` arrives (nothing was skipped after
/// all, or the skipped records now arrive) or a read from offset 0 still starts past it (a real gap).
#[derive(Debug)]
struct Reread {
    expect: i64,
    from: i64,
}

enum RereadStep {
    Reached,
    Gap,
    Again(i64),
}

impl Reread {
    fn start(expect: i64) -> Reread {
        Reread {
            expect,
            from: (expect - REREAD_WINDOW).max(0),
        }
    }

    fn next(&mut self, offset: i64) -> RereadStep {
        if offset <= self.expect {
            RereadStep::Reached
        } else if self.from == 0 {
            RereadStep::Gap
        } else {
            self.from = (self.expect - (self.expect - self.from) * 4).max(0);
            RereadStep::Again(self.from)
        }
    }
}

fn seek(consumer: &StreamConsumer<RebalanceCtx>, topic: &str, p: i32, offset: i64) {
    if let Err(e) = consumer.seek(topic, p, Offset::Offset(offset), Duration::from_secs(5)) {
        tracing::warn!(partition = p, offset, error = %e, "seek failed");
    }
}

/// Finds partitions that no live member processes. With tansu 0.6 a SIGKILLed member's partitions
/// sometimes stay with nobody after its session expired, or the group hands the live members an
/// empty assignment while dead members keep every partition (the soak test found readings waiting
/// for minutes; `crash.rs` restarts a stalled processor for the same reason). Every
/// [`ORPHAN_CHECK`], a partition not assigned here that has work waiting (records in its log past
/// its chain end in the lake, or a unit whose writer died between its gate commit and the rest),
/// and whose chain end has not moved for `patience`, is orphaned. A member with an empty
/// assignment watches too: a partition with a live owner moves on or has nothing waiting, so spare
/// members still cause no rebalances.
struct OrphanWatch {
    patience: Duration,
    last_check: Instant,
    /// Per partition: its chain end at the last change, and when that was.
    seen: HashMap<i32, (Option<i64>, Instant)>,
}

const ORPHAN_CHECK: Duration = Duration::from_secs(5);

impl OrphanWatch {
    fn new(patience: Duration) -> OrphanWatch {
        OrphanWatch {
            patience,
            last_check: Instant::now(),
            seen: HashMap::new(),
        }
    }

    async fn orphaned(
        &mut self,
        s: &Shared,
        consumer: &StreamConsumer<RebalanceCtx>,
        topic: &str,
        mine: &[i32],
    ) -> Option<i32> {
        if self.last_check.elapsed() < ORPHAN_CHECK {
            return None;
        }
        self.last_check = Instant::now();
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(2))
            .ok()?;
        let partitions: Vec<i32> = md
            .topics()
            .first()?
            .partitions()
            .iter()
            .map(|p| p.id())
            .collect();
        for p in partitions {
            if mine.contains(&p) {
                self.seen.remove(&p);
                continue;
            }
            let Ok(chain) = hexpulse_lake::unit::chain(&s.lake, topic, p).await else {
                continue;
            };
            let Ok((_, high)) = consumer.fetch_watermarks(topic, p, Duration::from_secs(2)) else {
                continue;
            };
            let end = chain.end;
            let waiting = chain.unfinished || high - 1 > end.unwrap_or(-1);
            let entry = self.seen.entry(p).or_insert((end, Instant::now()));
            if entry.0 != end || !waiting {
                *entry = (end, Instant::now());
                continue;
            }
            if entry.1.elapsed() >= self.patience {
                self.seen.clear();
                return Some(p);
            }
        }
        None
    }
}

/// The group's committed offset of `p` (`None`: nothing committed), or the error of asking.
fn committed_offset(
    consumer: &StreamConsumer<RebalanceCtx>,
    topic: &str,
    p: i32,
) -> Result<Option<i64>, rdkafka::error::KafkaError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, p);
    let got = consumer.committed_offsets(tpl, Duration::from_secs(5))?;
    Ok(match got.find_partition(topic, p).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    })
}

/// The raw topic's partition count, from the broker's metadata.
fn partition_count(consumer: &StreamConsumer<RebalanceCtx>, topic: &str) -> Option<i32> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let n = md.topics().first()?.partitions().len();
    (n > 0).then_some(n as i32)
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

/// Flushes one partition, retrying with backoff while the lake fails; commits on success.
async fn flush_partition(
    s: &Shared,
    consumer: &StreamConsumer<RebalanceCtx>,
    workers: &mut HashMap<i32, PartitionWorker>,
    p: i32,
    shutdown: &CancellationToken,
) {
    let Some(w) = workers.get_mut(&p) else { return };
    let mut backoff = Duration::from_millis(100);
    let outcome = loop {
        match w.flush(&s.rules.version).await {
            Ok(o) => break o,
            Err(e) => {
                metrics::counter!(m::FLUSH_ERRORS).increment(1);
                tracing::warn!(partition = p, error = %e, ?backoff, "flush failed; offsets stay uncommitted, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let topic = &s.kafka.raw_topic;
    match outcome {
        Flushed::Empty => {}
        Flushed::Committed { next_offset, rows } => {
            // The Kafka offset is committed when the next record arrives, at that record's offset:
            // `next_offset` itself may lie in an offset gap, where tansu's fetches stall.
            w.commit_pending = true;
            if let Err(e) = w.publish_watermark().await {
                tracing::warn!(partition = p, error = %e, "writing the watermark failed");
            }
            let wm = w.watermark_ms;
            metrics::gauge!(m::WATERMARK_MS, "partition" => p.to_string()).set(wm as f64);
            metrics::gauge!(m::LAG_MS, "partition" => p.to_string())
                .set((now_ms() - wm).max(0) as f64);
            tracing::debug!(partition = p, next_offset, rows, "unit committed");
        }
        Flushed::Fenced { next_offset } => {
            s.drop_worker(workers, p);
            // The next record re-initialises the worker (and re-reads if the broker skipped).
            seek(consumer, topic, p, next_offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rereads_widen_until_they_reach_the_chain_end_or_the_log_start() {
        let mut r = Reread::start(5000);
        assert_eq!(r.from, 5000 - REREAD_WINDOW);
        // The broker skipped again: read from four times as far back, then from the start.
        assert!(matches!(r.next(6000), RereadStep::Again(f) if f == 5000 - 4 * REREAD_WINDOW));
        assert!(matches!(r.next(6000), RereadStep::Again(0)));
        assert!(matches!(r.next(6000), RereadStep::Gap));
        let mut r = Reread::start(5000);
        assert!(matches!(r.next(4990), RereadStep::Reached));
        assert!(matches!(Reread::start(10).next(10), RereadStep::Reached));
        assert_eq!(Reread::start(10).from, 0);
    }
}
