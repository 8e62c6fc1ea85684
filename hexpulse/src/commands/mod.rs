//! The commands' bodies: [`run`] dispatches a parsed command line to the role or tool it names.

use std::time::Duration;

use anyhow::Context;
use hexpulse_common::registry::Registry;
use hexpulse_common::shutdown;

use crate::cli::Cmd;
use crate::config::Config;

mod epoch;
mod lake;
mod seal;
mod simulate;
mod up;

/// The reader of stdout went away.
#[derive(Debug)]
pub(crate) struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

pub(crate) fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("writing to stdout")
    }
}

pub(crate) fn open_registry(cfg: &Config) -> anyhow::Result<Registry> {
    if let Some(dir) = cfg
        .registry
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Registry::open(&cfg.registry.path)
        .with_context(|| format!("opening registry {}", cfg.registry.path.display()))
}

pub(crate) async fn run(cmd: Cmd, cfg: Config) -> anyhow::Result<()> {
    match cmd {
        Cmd::Config => {
            out!("{}", serde_json::to_string_pretty(&cfg.redacted())?);
            Ok(())
        }
        Cmd::Ingest => {
            tracing::info!(config = %cfg.redacted(), "starting ingest");
            let registry = open_registry(&cfg)?;
            let stop = shutdown::on_signals();
            hexpulse_ingest::run(cfg.ingest, cfg.kafka, registry, stop).await?;
            Ok(())
        }
        Cmd::Mqtt => {
            tracing::info!(config = %cfg.redacted(), "starting the MQTT bridge");
            let registry = open_registry(&cfg)?;
            let stop = shutdown::on_signals();
            let bridge = hexpulse_ingest::server::mqtt::start(
                cfg.ingest, cfg.mqtt, cfg.kafka, registry, stop,
            )
            .await?;
            out!("mqtt bridge: health and metrics on http://{}", bridge.addr);
            bridge.wait().await;
            Ok(())
        }
        Cmd::Process => {
            tracing::info!(config = %cfg.redacted(), "starting processor");
            let registry = open_registry(&cfg)?;
            let stop = shutdown::on_signals();
            let lake = hexpulse_lake::Lake::open(&cfg.process.lake_url)?;
            let mut processor = hexpulse_processors::run::start(
                cfg.process.clone(),
                cfg.kafka.clone(),
                registry.clone(),
                lake,
                stop.clone(),
            )
            .await?;
            processor.tasks.spawn(
                "registry-watch",
                registry.watch(Duration::from_secs(1), stop),
            );
            seal::beside(&cfg, &mut processor);
            processor.wait().await?;
            Ok(())
        }
        Cmd::Seal(a) => seal::seal(cfg, a).await,
        Cmd::Epoch(c) => epoch::epoch(cfg, c).await,
        Cmd::Query => {
            tracing::info!(config = %cfg.redacted(), "starting query service");
            let stop = shutdown::on_signals();
            let mut q = cfg.query;
            q.epoch = cfg.process.epoch.clone();
            hexpulse_query::run(q, stop).await?;
            Ok(())
        }
        Cmd::Alerts => {
            tracing::info!(config = %cfg.redacted(), "starting the alerts role");
            let stop = shutdown::on_signals();
            let lake = hexpulse_lake::Lake::open(&cfg.query.lake_url)?;
            hexpulse_query::alerts::run(cfg.query, lake, stop)
                .await
                .map_err(anyhow::Error::msg)?;
            Ok(())
        }
        Cmd::Lake(c) => lake::lake(cfg, c).await,
        Cmd::Simulate(args) => simulate::simulate(cfg, args).await,
        Cmd::Up(args) => up::up(cfg, args).await,
        Cmd::Bench(b) => crate::bench::run(cfg, b).await,
    }
}
