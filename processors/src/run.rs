//! The processor's consumer loop, its HTTP endpoints and its shutdown.

use hexpulse_common::time::now_ms;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hexpulse_common::kafka::KafkaConfig;
use hexpulse_common::registry::Registry;
use hexpulse_schemas::wire::headers;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::ProcessConfig;
use crate::h3bin::Binner;
use crate::lake::Lake;
use crate::metrics as m;
use crate::partition::{Flushed, PartitionWorker, Roll};
use crate::rules::Rules;
use crate::validate::Validator;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("lake: {0}")]
    Lake(#[from] crate::lake::LakeError),
    #[error("rules: {0}")]
    Rules(#[from] crate::rules::RulesError),
    #[error("{0}")]
    Config(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Records partitions taken away by a rebalance, for the loop to drop their state.
#[derive(Default, Clone)]
struct RebalanceCtx {
    revoked: Arc<Mutex<Vec<i32>>>,
}

impl ClientContext for RebalanceCtx {}

impl ConsumerContext for RebalanceCtx {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut r = self.revoked.lock().expect("lock");
            r.extend(tpl.elements().iter().map(|e| e.partition()));
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
    sealed: Arc<crate::epoch::SealedEpochs>,
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
    let binner =
        Binner::new(&cfg.h3_resolutions).map_err(|e| ProcessError::Config(e.to_string()))?;
    if let Err(e) = kafka.ensure_topics(&[&kafka.raw_topic]).await {
        tracing::warn!(error = %e, "could not ensure the raw topic exists");
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ProcessError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ProcessError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let handle = hexpulse_common::telemetry::metrics_handle();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(move || std::future::ready(handle.render())),
        );
    let http_stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(http_stop.cancelled_owned())
            .await;
    });
    tracing::info!(%addr, lake = %cfg.lake_url, rules = %rules.version, "processor starting");
    if !cfg.compact_interval.is_zero() {
        let close_after =
            rules.time.allowed_lateness + rules.time.max_future_skew + cfg.compact_grace;
        tokio::spawn(crate::compact::run_compactor(
            lake.clone(),
            cfg.compact_interval,
            close_after,
            crate::compact::CompactOptions {
                target_bytes: cfg.compact_target_bytes,
                retention: cfg.compact_retention,
            },
            shutdown.clone(),
        ));
    }
    let sealed = Arc::new(
        crate::epoch::SealedEpochs::new(cfg.epoch.clone())
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
        tokio::spawn(crate::epoch::seal::run_sealer(
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

fn receive_ms(msg: &BorrowedMessage<'_>) -> i64 {
    msg.headers()
        .and_then(|h| {
            h.iter()
                .find(|x| x.key == headers::RECEIVED_MS)
                .and_then(|x| std::str::from_utf8(x.value?).ok()?.parse().ok())
        })
        .or_else(|| msg.timestamp().to_millis())
        .unwrap_or(0)
}

async fn consume(s: Arc<Shared>, shutdown: CancellationToken) -> Result<(), ProcessError> {
    let ctx = RebalanceCtx::default();
    let revoked = ctx.revoked.clone();
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
    let roll = Roll {
        rows: s.cfg.roll_rows,
        bytes: s.cfg.roll_bytes,
        age: s.cfg.roll_age,
    };
    let mut workers: HashMap<i32, PartitionWorker> = HashMap::new();
    let mut tick = tokio::time::interval((s.cfg.roll_age / 2).max(Duration::from_millis(20)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let topic = s.kafka.raw_topic.clone();
    let idle_after = s.cfg.epoch.idle_after;
    // Per partition: records pushed at the last change, when that was, and the last idle write.
    let mut activity: HashMap<i32, (u64, Instant, Option<Instant>)> = HashMap::new();
    {
        let mut stream = consumer.stream();
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => None,
                m = stream.next() => m,
            };
            for p in std::mem::take(&mut *revoked.lock().expect("lock")) {
                if workers.remove(&p).is_some() {
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
                let recv = receive_ms(&msg);
                if let std::collections::hash_map::Entry::Vacant(e) = workers.entry(p) {
                    // Resume at the end of the claim chain, found from the committed offset (always a
                    // chain boundary), never from whatever offset happened to arrive first.
                    let from = committed_offset(&consumer, &topic, p).unwrap_or(offset);
                    let w = init_worker(&s, &topic, p, from.min(offset), recv).await?;
                    let resume = w.next_offset();
                    e.insert(w);
                    if offset > resume {
                        // No seek needed: the consumer starts at the committed offset, which is at or
                        // before the chain end, so nothing exists in the log between the chain end and
                        // this record (tansu leaves such offset gaps). The next unit starts at the
                        // chain end and covers the gap. (Seeking into a gap stalls tansu's fetches.)
                        tracing::debug!(
                            partition = p,
                            offset,
                            resume,
                            "offset gap after the chain end"
                        );
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
                w.push(offset, msg.payload().unwrap_or_default(), recv);
                if w.is_full(roll) {
                    flush_partition(&s, &consumer, &mut workers, p, &shutdown).await;
                }
                continue;
            }
            // A tick (or the stream paused): flush units that are old enough, advance idle watermarks.
            let due: Vec<i32> = workers
                .iter()
                .filter(|(_, w)| w.should_flush(roll))
                .map(|(p, _)| *p)
                .collect();
            for p in due {
                flush_partition(&s, &consumer, &mut workers, p, &shutdown).await;
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
            flush_partition(&s, &consumer, &mut workers, p, &never),
        )
        .await;
    }
    tracing::info!("processor stopped");
    Ok(())
}

/// The group's committed offset of `p`, if any.
fn committed_offset(consumer: &StreamConsumer<RebalanceCtx>, topic: &str, p: i32) -> Option<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, p);
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .ok()?;
    match got.find_partition(topic, p)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

async fn init_worker(
    s: &Shared,
    topic: &str,
    p: i32,
    offset: i64,
    recv: i64,
) -> Result<PartitionWorker, ProcessError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let validator = Validator::new(
            s.rules.clone(),
            s.registry.clone(),
            s.cfg.reverify_signatures,
        )
        .with_sealed(s.sealed.clone());
        match PartitionWorker::init(
            topic,
            p,
            offset,
            recv,
            s.lake.clone(),
            validator,
            s.binner.clone(),
            s.cfg.h3_resolutions.clone(),
        )
        .await
        {
            Ok(w) => return Ok(w),
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
            workers.remove(&p);
            if let Err(e) = consumer.seek(
                topic,
                p,
                Offset::Offset(next_offset),
                Duration::from_secs(5),
            ) {
                tracing::warn!(partition = p, error = %e, "seek after fencing failed");
            }
        }
    }
}
