//! `hexpulse`: every Hexpulse role as a subcommand, or all of them in one process (`up`).

mod bench;
mod config;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use hexpulse_common::registry::Registry;
use hexpulse_common::{shutdown, telemetry};
use hexpulse_ingest::server::Ingest;

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "hexpulse",
    version,
    about = "Hexpulse: signed DePIN device data into an H3 Parquet lake"
)]
struct Cli {
    /// Config file (TOML); overrides the embedded defaults. Env HEXPULSE__SECTION__KEY overrides both.
    #[arg(long, short, env = "HEXPULSE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the ingest service (devices POST signed batches; enqueued into Kafka).
    Ingest,
    /// Run a stream processor (validate, H3-bin, write Parquet exactly once).
    Process,
    /// Seal epochs (not built yet: issue #5).
    Seal,
    /// Run the query service (not built yet: issue #6).
    Query,
    /// Send simulated device traffic to an ingest endpoint.
    Simulate(SimArgs),
    /// Run every built role in one process, with demo traffic, and print the URLs.
    Up {
        /// Do not start the demo traffic.
        #[arg(long)]
        no_traffic: bool,
        /// Demo traffic rate in readings per second (default from [simulate]).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Merge the small files of closed hours in the lake (the processor also does this on a timer).
    Compact {
        /// Treat hours that ended before this long ago as closed (default: the rules' lateness and
        /// skew plus `process.compact_grace`). "0s" compacts every hour that has ended.
        #[arg(long, value_parser = humantime::parse_duration)]
        closed_after: Option<Duration>,
    },
    /// Inspect the lake.
    #[command(subcommand)]
    Lake(LakeCmd),
    /// Print the effective configuration (secrets removed) and exit.
    Config,
    /// Benchmarks (see load-tests/RESULTS.md).
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Debug, clap::Args)]
struct SimArgs {
    /// Ingest base URL.
    #[arg(long)]
    target_url: Option<String>,
    /// Readings per second (0 = flat out).
    #[arg(long)]
    rate: Option<f64>,
    /// Stop after this many readings.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    #[arg(long)]
    devices: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    concurrency: Option<usize>,
    /// Also write the simulated devices into the registry file.
    #[arg(long)]
    register: bool,
}

#[derive(Debug, Subcommand)]
enum LakeCmd {
    /// Print the valid files of a table (heartbeat, sensor, road, rejected), one path per line,
    /// relative to the lake root: what a reader outside Hexpulse should read, compactions applied.
    Files { table: String },
    /// Count rows and files per table (valid files only).
    Stats,
}

#[derive(Debug, Subcommand)]
enum BenchCmd {
    /// Ingest throughput per ingest core against the raw Ed25519 batch-verify rate.
    Ingest {
        /// Pre-signed readings to send.
        #[arg(long, default_value_t = 200_000)]
        readings: usize,
        #[arg(long, default_value_t = 500)]
        batch: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Write the JSON report here too.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Processor throughput per core on a pre-filled topic, re-verification off and on.
    Process {
        /// Readings pre-filled into the topic.
        #[arg(long, default_value_t = 300_000)]
        readings: usize,
        /// Write the JSON report here too.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Only the raw Ed25519 verify rates of one core.
    Verify,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_logging();
    let cfg = Config::load(cli.config.as_deref()).context("loading configuration")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cli.cmd, cfg))
}

fn open_registry(cfg: &Config) -> anyhow::Result<Registry> {
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

async fn run(cmd: Cmd, cfg: Config) -> anyhow::Result<()> {
    match cmd {
        Cmd::Config => {
            println!("{}", serde_json::to_string_pretty(&cfg.redacted())?);
            Ok(())
        }
        Cmd::Ingest => {
            tracing::info!(config = %cfg.redacted(), "starting ingest");
            let registry = open_registry(&cfg)?;
            let stop = shutdown::on_signals();
            hexpulse_ingest::run(cfg.ingest, cfg.kafka, registry, stop).await?;
            Ok(())
        }
        Cmd::Process => {
            tracing::info!(config = %cfg.redacted(), "starting processor");
            let registry = open_registry(&cfg)?;
            let stop = shutdown::on_signals();
            tokio::spawn(registry.clone().watch(Duration::from_secs(1), stop.clone()));
            hexpulse_processors::run::run(cfg.process, cfg.kafka, registry, stop).await?;
            Ok(())
        }
        Cmd::Seal => bail!("`hexpulse seal` is not built yet (issue #5)"),
        Cmd::Query => bail!("`hexpulse query` is not built yet (issue #6)"),
        Cmd::Compact { closed_after } => compact(cfg, closed_after).await,
        Cmd::Lake(c) => lake(cfg, c).await,
        Cmd::Simulate(args) => simulate(cfg, args).await,
        Cmd::Up { no_traffic, rate } => up(cfg, no_traffic, rate).await,
        Cmd::Bench(b) => bench(cfg, b).await,
    }
}

async fn compact(cfg: Config, closed_after: Option<Duration>) -> anyhow::Result<()> {
    use hexpulse_processors::compact;
    let lake = hexpulse_processors::lake::Lake::open(&cfg.process.lake_url)?;
    let rules = hexpulse_processors::rules::Rules::load(cfg.process.rules_path.as_deref())?;
    let close_after = closed_after.unwrap_or(
        rules.time.allowed_lateness + rules.time.max_future_skew + cfg.process.compact_grace,
    );
    let cut = hexpulse_common::time::now_ms() - close_after.as_millis() as i64;
    let opts = compact::CompactOptions {
        target_bytes: cfg.process.compact_target_bytes,
        retention: cfg.process.compact_retention,
    };
    eprintln!(
        "compacting hours of {} that ended {} ago or earlier",
        cfg.process.lake_url,
        humantime::format_duration(close_after)
    );
    let done = compact::compact_closed(&lake, cut, &opts).await?;
    for (table, date, hour, outcome) in &done {
        println!("{table} {date} {hour:02}: {outcome:?}");
    }
    eprintln!("{} hour(s) compacted", done.len());
    Ok(())
}

async fn lake(cfg: Config, c: LakeCmd) -> anyhow::Result<()> {
    use hexpulse_processors::compact;
    let lake = hexpulse_processors::lake::Lake::open(&cfg.process.lake_url)?;
    match c {
        LakeCmd::Files { table } => {
            if !compact::tables().contains(&table.as_str()) {
                bail!(
                    "unknown table {table:?}; tables: {}",
                    compact::tables().join(", ")
                );
            }
            for f in compact::valid_files(&lake, &table).await? {
                println!("{f}");
            }
        }
        LakeCmd::Stats => {
            for table in compact::tables() {
                let mut rows = 0u64;
                let files = compact::valid_files(&lake, table).await?;
                for f in &files {
                    rows += lake.row_count(f).await?;
                }
                println!("{table:10} {:>8} files {rows:>12} rows", files.len());
            }
        }
    }
    Ok(())
}

async fn simulate(mut cfg: Config, a: SimArgs) -> anyhow::Result<()> {
    let s = &mut cfg.simulate;
    if let Some(v) = a.target_url {
        s.target_url = v
    }
    if let Some(v) = a.rate {
        s.rate = v
    }
    if let Some(v) = a.count {
        s.count = v
    }
    if let Some(v) = a.duration {
        s.duration = v
    }
    if let Some(v) = a.devices {
        s.devices = v
    }
    if let Some(v) = a.batch_size {
        s.batch_size = v
    }
    if let Some(v) = a.concurrency {
        s.concurrency = v
    }
    let fleet = cfg.simulate.fleet();
    if a.register {
        open_registry(&cfg)?.upsert_all(fleet.registry_devices())?;
        eprintln!(
            "registered {} simulated devices in {}",
            cfg.simulate.devices,
            cfg.registry.path.display()
        );
    }
    let stop = shutdown::on_signals();
    let summary = hexpulse_load_tests::sim::run(&cfg.simulate, fleet, stop, true).await;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

async fn up(mut cfg: Config, no_traffic: bool, rate: Option<f64>) -> anyhow::Result<()> {
    let registry = open_registry(&cfg)?;
    let fleet = cfg.simulate.fleet();
    registry.upsert_all(fleet.registry_devices())?;
    tracing::info!(config = %cfg.redacted(), "starting hexpulse up");
    let stop = shutdown::on_signals();
    let ingest = Ingest::start(
        cfg.ingest.clone(),
        cfg.kafka.clone(),
        registry.clone(),
        stop.clone(),
    )
    .await?;
    let lake = hexpulse_processors::lake::Lake::open(&cfg.process.lake_url)?;
    let processor = hexpulse_processors::run::start(
        cfg.process.clone(),
        cfg.kafka.clone(),
        registry,
        lake,
        stop.clone(),
    )
    .await?;
    let base = format!("http://{}", ingest.addr);
    println!();
    println!("Hexpulse is up.");
    println!("  ingest   POST {base}/v1/readings   (protobuf or JSON batches of signed readings)");
    println!("  health   {base}/healthz  {base}/readyz");
    println!(
        "  metrics  {base}/metrics   processor http://{}/metrics",
        processor.addr
    );
    println!(
        "  lake     {} (Parquet, hive-partitioned: heartbeat/ sensor/ road/ rejected/)",
        cfg.process.lake_url
    );
    println!(
        "  broker   {}   topic {}",
        cfg.kafka.brokers, cfg.kafka.raw_topic
    );
    println!(
        "  registry {} ({} simulated devices)",
        cfg.registry.path.display(),
        cfg.simulate.devices
    );
    println!("Not built yet: epochs (#5), query service and map (#6, #7).");
    println!("Ctrl-C stops everything.");
    println!();
    let traffic = if no_traffic {
        None
    } else {
        cfg.simulate.target_url = base;
        if let Some(r) = rate {
            cfg.simulate.rate = r;
        }
        let stop = stop.clone();
        Some(tokio::spawn(async move {
            hexpulse_load_tests::sim::run(&cfg.simulate, fleet, stop, true).await
        }))
    };
    let _ = ingest.task.await;
    match processor.task.await {
        Ok(Err(e)) => tracing::error!(error = %e, "processor failed"),
        Err(e) => tracing::error!(error = %e, "processor task failed"),
        Ok(Ok(())) => {}
    }
    if let Some(t) = traffic
        && let Ok(summary) = t.await
    {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(())
}

async fn bench(cfg: Config, b: BenchCmd) -> anyhow::Result<()> {
    match b {
        BenchCmd::Verify => {
            let r = tokio::task::spawn_blocking(|| {
                hexpulse_load_tests::bench::raw_verify_rates(Duration::from_secs(3))
            })
            .await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }
        BenchCmd::Ingest {
            readings,
            batch,
            concurrency,
            out,
        } => bench::ingest(cfg, readings, batch, concurrency, out).await,
        BenchCmd::Process { readings, out } => bench::process(cfg, readings, out).await,
    }
}
