//! A processor's start: the HTTP endpoints, the background tasks, and the consumer loop (its
//! sessions are [`crate::session`]'s), until shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hexpulse_common::fault::{Classify, Fault};
use hexpulse_common::health::Health;
use hexpulse_common::kafka::KafkaConfig;
use hexpulse_common::registry::Registry;
use hexpulse_common::tasks::Tasks;
use hexpulse_schemas::wire::envelope::EnvelopeKey;
use tokio_util::sync::CancellationToken;

use crate::config::ProcessConfig;
use crate::h3bin::Binner;
use crate::live::LiveStore;
use crate::metrics as m;
use crate::partition::PartitionWorker;
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

impl Classify for ProcessError {
    fn fault(&self) -> Fault {
        match self {
            ProcessError::Kafka(_) => Fault::External,
            ProcessError::Lake(e) => e.fault(),
            ProcessError::Rules(_) | ProcessError::Config(_) | ProcessError::Bind { .. } => {
                Fault::User
            }
        }
    }
}

/// A started processor.
pub struct Running {
    /// The listener of health, metrics and live rows.
    pub addr: SocketAddr,
    /// The consumer loop: it ends (flushing and committing) at shutdown, or with an error.
    pub task: tokio::task::JoinHandle<Result<(), ProcessError>>,
    /// The background tasks (lake maintenance, the sealed-epochs refresher), awaited by
    /// [`Running::wait`].
    pub tasks: Tasks,
    /// The processor's readiness (`/readyz`): a background task that died takes it down.
    pub health: Health,
    /// The epochs this processor knows to be sealed: a sealer in the same process marks its own.
    pub sealed: Arc<hexpulse_lake::epoch::SealedEpochs>,
    /// The lake it writes.
    pub lake: Lake,
    /// The rules it validates with.
    pub rules: Rules,
}

impl Running {
    /// Awaits the consumer loop, then the background tasks.
    pub async fn wait(self) -> Result<(), ProcessError> {
        let done = self
            .task
            .await
            .unwrap_or_else(|e| Err(ProcessError::Config(format!("processor task failed: {e}"))));
        self.tasks.join().await;
        done
    }
}

/// What the consumer loop's sessions share.
pub(crate) struct Shared {
    pub(crate) cfg: ProcessConfig,
    pub(crate) kafka: KafkaConfig,
    pub(crate) lake: Lake,
    pub(crate) rules: Rules,
    pub(crate) registry: Registry,
    pub(crate) binner: Binner,
    pub(crate) sealed: Arc<hexpulse_lake::epoch::SealedEpochs>,
    pub(crate) envelope_key: Option<EnvelopeKey>,
    pub(crate) live: Option<Arc<LiveStore>>,
    /// The processor's readiness: a partition stopped by a permanent flush error fails it.
    pub(crate) health: Health,
}

impl Shared {
    /// Forgets partition `p`'s worker and its live rows.
    pub(crate) fn drop_worker(&self, workers: &mut HashMap<i32, PartitionWorker>, p: i32) -> bool {
        if let Some(live) = &self.live {
            live.remove(p);
        }
        workers.remove(&p).is_some()
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
    let live = (!cfg.live.interval.is_zero()).then(|| {
        Arc::new(LiveStore::new(
            &kafka.raw_topic,
            cfg.live.retention,
            cfg.live.memory_bytes,
            STREAM_TABLES.map(|t| {
                hexpulse_lake::live::with_partition_fields(&crate::sealed::table_schema(
                    t,
                    &cfg.h3_resolutions,
                ))
            }),
        ))
    });
    let health = Health::new();
    let mut tasks = Tasks::new(health.clone(), shutdown.clone());
    let mut app = hexpulse_common::health::side_router(&health);
    if let Some(live) = &live {
        app = app.merge(
            axum::Router::new()
                .route(
                    "/v1/live/{table}",
                    axum::routing::get(crate::live::live_rows),
                )
                .with_state(live.clone()),
        );
    }
    let addr = hexpulse_common::http::serve_in_background(cfg.listen, app, "listener", &mut tasks)
        .await
        .map_err(|source| ProcessError::Bind {
            addr: cfg.listen,
            source,
        })?;
    tracing::info!(%addr, lake = %cfg.lake_url, rules = %rules.version, "processor starting");
    if !cfg.compact_interval.is_zero() {
        let close_after =
            rules.time.allowed_lateness + rules.time.max_future_skew + cfg.compact_grace;
        let (lake, opts) = (
            lake.clone(),
            hexpulse_lake::compact::CompactOptions {
                target_bytes: cfg.compact_target_bytes,
                memory_bytes: cfg.compact_memory_bytes,
                retention: cfg.compact_retention,
            },
        );
        tasks.spawn_every("compactor", cfg.compact_interval, move || {
            let (lake, opts) = (lake.clone(), opts.clone());
            async move { hexpulse_lake::compact::maintenance_round(&lake, close_after, &opts).await }
        });
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
        let (sealed, lake) = (sealed.clone(), lake.clone());
        tasks.spawn_every("sealed-epochs", Duration::from_secs(2), move || {
            let (sealed, lake) = (sealed.clone(), lake.clone());
            async move {
                if let Err(e) = sealed.refresh(&lake).await {
                    tracing::debug!(error = %e, "refreshing sealed epochs failed");
                }
            }
        });
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
        health: health.clone(),
    });
    let task = tokio::spawn(consume(shared.clone(), shutdown));
    Ok(Running {
        addr,
        task,
        tasks,
        health,
        sealed: shared.sealed.clone(),
        lake: shared.lake.clone(),
        rules: shared.rules.clone(),
    })
}

/// Runs a processor until `shutdown`.
pub async fn run(
    cfg: ProcessConfig,
    kafka: KafkaConfig,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), ProcessError> {
    let lake = Lake::open(&cfg.lake_url)?;
    start(cfg, kafka, registry, lake, shutdown)
        .await?
        .wait()
        .await
}

/// Consumes until `shutdown`, joining the group again whenever a join goes unanswered.
async fn consume(s: Arc<Shared>, shutdown: CancellationToken) -> Result<(), ProcessError> {
    while crate::session::consume_session(&s, &shutdown).await? == crate::session::Ended::Rejoin {
        metrics::counter!(m::REJOINS_TOTAL).increment(1);
    }
    Ok(())
}
