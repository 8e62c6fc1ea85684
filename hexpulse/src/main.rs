//! `hexpulse`: every Hexpulse role as a subcommand, or all of them in one process (`up`).

mod bench;
mod bench_e2e;
mod bench_lake;
mod bench_query;
mod bench_seal;
mod broker_watch;
mod config;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use hexpulse_common::registry::Registry;
use hexpulse_common::{shutdown, telemetry};
use hexpulse_ingest::server::Ingest;

use crate::config::Config;

/// mimalloc instead of the system allocator: the query service's Parquet decoding allocates and
/// frees a buffer per page and column, and glibc's malloc spent a fifth of a query's CPU on it.
/// Built with `no_thp`: on hosts with transparent huge pages "always", mimalloc's arenas otherwise
/// grow resident memory in 2 MiB steps (the query service's peak RSS went from ~100 MiB to ~1 GiB).
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "dhat-heap")]
#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

/// With the `dhat-heap` feature: profiles the heap from here on, and writes `dhat-heap-PID.json` (the
/// blocks live at that moment, by allocation site: open it in dhat's viewer) after
/// `HEXPULSE_DHAT_SECS` seconds, or at exit.
#[cfg(feature = "dhat-heap")]
fn heap_profile() -> Option<dhat::Profiler> {
    // Per process: the soak runs several (up, a second processor, the simulators) in one directory.
    let profiler = dhat::Profiler::builder()
        .file_name(format!("dhat-heap-{}.json", std::process::id()))
        .build();
    let Some(secs) = std::env::var("HEXPULSE_DHAT_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return Some(profiler);
    };
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs));
        drop(profiler);
        eprintln!("dhat: heap profile written after {secs} s");
    });
    None
}

#[derive(Debug, Parser)]
#[command(
    name = "hexpulse",
    version,
    about = "Hexpulse: signed DePIN device data into an H3 Parquet lake"
)]
struct Cli {
    /// Config file (TOML); overrides the embedded defaults. Repeat it (or separate paths by commas
    /// in HEXPULSE_CONFIG) to layer files: later files win. Env HEXPULSE__SECTION__KEY overrides all.
    #[arg(long, short, env = "HEXPULSE_CONFIG", global = true)]
    config: Vec<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the ingest service (devices POST signed batches; enqueued into Kafka).
    Ingest,
    /// Run a stream processor (validate, H3-bin, write Parquet exactly once).
    Process,
    /// Seal epochs into deterministic reward inputs (device summaries, hex tables, manifest with a
    /// Merkle root). Without --epoch, seals every complete epoch not sealed yet, in order.
    Seal(SealArgs),
    /// Sealed epochs: list, show a manifest, prove a device's summary, verify a proof, diff results.
    #[command(subcommand)]
    Epoch(EpochCmd),
    /// Run the query service: hex maps, vector tiles, dead zones, sensor and road aggregates,
    /// epochs and read-only SQL over the lake (routes: /openapi.json).
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
        /// A shell command that restarts the broker on its durable storage. With it, `up` probes
        /// the broker with a produce request every few seconds and runs the command when none was
        /// acknowledged for --broker-stall (`make up` passes `scripts/broker.sh restart sqlite PORT`).
        #[arg(long, value_name = "COMMAND")]
        broker_restart: Option<String>,
        /// How long without an acknowledged probe counts as a wedged broker.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        broker_stall: Duration,
    },
    /// Inspect and maintain the lake's Delta tables.
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
    /// Build and sign every reading before the clock starts (needs --count, or --rate and
    /// --duration), so signing does not compete with the pipeline for CPU, as devices sign on
    /// their own hardware. Readings are timestamped when built.
    #[arg(long)]
    presign: bool,
    /// Also write the simulated devices into the registry file.
    #[arg(long)]
    register: bool,
    /// Send every adversarial class at this share (of readings; of requests for malformed and
    /// oversize bodies), e.g. 0.01. Per-class shares: [simulate.adversarial] in the config.
    #[arg(long)]
    adversarial: Option<f64>,
    /// The query service; with it the run measures freshness (a probe device, registered with
    /// --register) and, with --account, checks the lake.
    #[arg(long)]
    query_url: Option<String>,
    /// Bearer token for the query service (needs the `raw` group for accounting).
    #[arg(long, env = "HEXPULSE_QUERY_TOKEN", hide_env_values = true)]
    query_token: Option<String>,
    /// After the run, compare every reading sent with the lake (needs --query-url); exits non-zero
    /// on any mismatch.
    #[arg(long, requires = "query_url")]
    account: bool,
    /// How long accounting waits for the lake to catch up.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
    settle: Duration,
    /// Write the JSON summary (with accounting and freshness) here too.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct SealArgs {
    /// The epoch to seal.
    #[arg(long)]
    epoch: Option<i64>,
    /// Seal even though some partition's watermark has not passed the epoch end plus the lateness
    /// (recorded in the manifest as forced).
    #[arg(long)]
    force: bool,
    /// Compute under these rules instead (a re-run; needs --out).
    #[arg(long, requires = "out")]
    rules: Option<PathBuf>,
    /// Write the epoch folder under this directory (or object store URL) instead of the lake, leaving
    /// the sealed epoch untouched.
    #[arg(long)]
    out: Option<String>,
    /// Keep running: seal every complete epoch, then look again after this long (e.g. 1m), until
    /// Ctrl-C. For a sealer scheduled apart from the processors.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "epoch")]
    every: Option<Duration>,
    /// With --every: serve /healthz, /readyz and /metrics (Prometheus) here, e.g. 0.0.0.0:9090.
    /// /readyz fails while the last round ended in an error.
    #[arg(long, requires = "every")]
    listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Subcommand)]
enum EpochCmd {
    /// Epochs with a manifest, with their root and device count.
    List,
    /// Print the manifest of an epoch.
    Show {
        #[arg(long)]
        epoch: i64,
    },
    /// Print the Merkle inclusion proof (JSON) of a device's summary row.
    Proof {
        #[arg(long)]
        epoch: i64,
        /// Device public key, hex.
        #[arg(long)]
        device: String,
    },
    /// Check a proof (JSON file, or - for stdin) against the root in the lake's manifest, or --root.
    Verify {
        #[arg(long)]
        proof: PathBuf,
        #[arg(long)]
        root: Option<String>,
    },
    /// Per-device differences of an epoch between the lake and another result (e.g. a --out re-run).
    Diff {
        #[arg(long)]
        epoch: i64,
        /// The other lake (directory or URL).
        #[arg(long)]
        other: String,
    },
}

#[derive(Debug, Subcommand)]
enum LakeCmd {
    /// Print the data files of a table's newest snapshot (heartbeat, sensor, road, rejected), one
    /// path per line, relative to the lake root.
    Files { table: String },
    /// Count rows and files per table in the newest snapshots, with each table's Delta version.
    Stats,
    /// Print a table's newest commits: version, time, operation, files added and removed, and the
    /// Kafka offsets (txn versions) a commit covers.
    History {
        table: String,
        /// How many commits, newest first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Merge the small files of closed hours (the processor also does this on a timer).
    Compact {
        /// Treat hours that ended before this long ago as closed (default: the rules' lateness and
        /// skew plus `process.compact_grace`). "0s" compacts every hour that has ended.
        #[arg(long, value_parser = humantime::parse_duration)]
        closed_after: Option<Duration>,
    },
    /// Delete files that no snapshot references any more (replaced by compaction, or left by a
    /// writer that never committed), once older than the retention; then the log entries before
    /// the newest checkpoint older than the retention (versions that sealed epochs pin stay
    /// loadable).
    Vacuum {
        /// Default: `process.compact_retention`.
        #[arg(long, value_parser = humantime::parse_duration)]
        retention: Option<Duration>,
    },
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
        #[arg(long, default_value_t = 600_000)]
        readings: usize,
        /// Write the JSON report here too.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The query service against DuckDB (from PyPI) on the same lake of simulated readings:
    /// coverage for a city over an hour and a day, an hourly sensor series over a week, ad-hoc SQL.
    Query {
        /// Simulated readings in the lake (a week of event time).
        #[arg(long, default_value_t = 10_000_000)]
        readings: usize,
        /// Timed runs of each query (after one warm-up), per engine.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// The Python with DuckDB (`make bench` passes the venv's).
        #[arg(long, env = "HEXPULSE_PYTHON", default_value = "python3")]
        python: PathBuf,
        /// Keep the lake in this directory and reuse it when it is already there (built with the
        /// same --readings); without it the lake is built in a temporary directory and removed.
        #[arg(long)]
        lake: Option<PathBuf>,
        /// Write the JSON report here too.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Only the raw Ed25519 verify rates of one core.
    Verify,
    /// The whole pipeline, each role its own process: sustained rate from simulator to queryable
    /// Parquet, accounting, freshness, and peak RSS per role.
    E2e(bench_e2e::E2eArgs),
    /// The Delta log over a simulated day of the processors' commits: commits per second, commit
    /// latency, log size, and the time to open and to refresh a table at the end of the day.
    Lake(bench_lake::LakeArgs),
    /// Sealing one large epoch within a memory budget: time, spill and peak RSS.
    Seal(bench_seal::SealArgs),
}

/// `println!` that returns a closed stdout as an error (`hexpulse lake files | head`), where
/// `println!` panics; `main` ends quietly on it, as other command-line tools do.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(stdout_error)?
    }};
}

/// The reader of stdout went away.
#[derive(Debug)]
struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("writing to stdout")
    }
}

fn main() -> anyhow::Result<()> {
    #[cfg(feature = "dhat-heap")]
    let _profile = heap_profile();
    let cli = Cli::parse();
    telemetry::init_logging();
    // A descriptor per connection and per file written: the soft limit (often 1024) is too low.
    match hexpulse_common::serve::raise_open_files_limit() {
        Ok(n) => tracing::debug!(open_files = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
    // Comma-separated lists (HEXPULSE_CONFIG=base.toml,overlay.toml) layer in order.
    let files: Vec<PathBuf> = cli
        .config
        .iter()
        .flat_map(|p| match p.to_str() {
            Some(s) => s
                .split(',')
                .filter(|f| !f.is_empty())
                .map(PathBuf::from)
                .collect(),
            None => vec![p.clone()],
        })
        .collect();
    let cfg = Config::load(&files).context("loading configuration")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match rt.block_on(run(cli.cmd, cfg)) {
        // The reader of stdout went away: stop as a killed-by-SIGPIPE tool would (128 + 13).
        Err(e) if e.is::<StdoutClosed>() => std::process::exit(141),
        r => r,
    }
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
        Cmd::Process => {
            tracing::info!(config = %cfg.redacted(), "starting processor");
            let registry = open_registry(&cfg)?;
            let stop = shutdown::on_signals();
            tokio::spawn(registry.clone().watch(Duration::from_secs(1), stop.clone()));
            hexpulse_processors::run::run(cfg.process, cfg.kafka, registry, stop).await?;
            Ok(())
        }
        Cmd::Seal(a) => seal(cfg, a).await,
        Cmd::Epoch(c) => epoch(cfg, c).await,
        Cmd::Query => {
            tracing::info!(config = %cfg.redacted(), "starting query service");
            let stop = shutdown::on_signals();
            let mut q = cfg.query;
            q.epoch = cfg.process.epoch.clone();
            hexpulse_query::run(q, stop).await?;
            Ok(())
        }
        Cmd::Lake(c) => lake(cfg, c).await,
        Cmd::Simulate(args) => simulate(cfg, args).await,
        Cmd::Up {
            no_traffic,
            rate,
            broker_restart,
            broker_stall,
        } => {
            let watch = broker_restart.map(|restart| broker_watch::Watch {
                restart,
                stall: broker_stall,
                every: (broker_stall / 6).max(Duration::from_secs(1)),
            });
            up(cfg, no_traffic, rate, watch).await
        }
        Cmd::Bench(b) => bench(cfg, b).await,
    }
}

async fn seal(cfg: Config, a: SealArgs) -> anyhow::Result<()> {
    let Some(every) = a.every else {
        return seal_once(&cfg, &a).await;
    };
    let stop = shutdown::on_signals();
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    if let Some(addr) = a.listen {
        serve_sealer_health(addr, healthy.clone(), stop.clone()).await?;
    }
    loop {
        match seal_once(&cfg, &a).await {
            Ok(()) => {
                healthy.store(true, std::sync::atomic::Ordering::Relaxed);
                metrics::counter!("hexpulse_sealer_rounds_total", "outcome" => "ok").increment(1);
            }
            Err(e) if not_ready(&e) => {
                eprintln!("waiting: {e}");
                metrics::counter!("hexpulse_sealer_rounds_total", "outcome" => "waiting")
                    .increment(1);
            }
            // A scheduled sealer outlives a passing store or broker error: it reports it, turns
            // unready, and tries again next round.
            Err(e) if a.listen.is_some() => {
                tracing::error!(error = format!("{e:#}"), "sealing round failed");
                healthy.store(false, std::sync::atomic::Ordering::Relaxed);
                metrics::counter!("hexpulse_sealer_rounds_total", "outcome" => "error")
                    .increment(1);
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// The scheduled sealer's health and metrics listener.
/// Whether a sealing round stopped at an epoch that is not complete yet (the sealer waits), by the
/// error's type, whatever context was added to it.
fn not_ready(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<hexpulse_lake::epoch::EpochError>(),
        Some(hexpulse_lake::epoch::EpochError::NotReady(_))
    )
}

async fn serve_sealer_health(
    addr: std::net::SocketAddr,
    healthy: Arc<std::sync::atomic::AtomicBool>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use axum::http::StatusCode;
    let handle = telemetry::metrics_handle();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let ok = healthy.load(std::sync::atomic::Ordering::Relaxed);
                std::future::ready(if ok {
                    (StatusCode::OK, "ok")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the last sealing round failed",
                    )
                })
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || std::future::ready(handle.render())),
        );
    let bound = hexpulse_common::http::serve_in_background(addr, app, stop)
        .await
        .with_context(|| format!("binding the sealer's listener {addr}"))?;
    eprintln!("sealer health and metrics on http://{bound}/");
    Ok(())
}

async fn seal_once(cfg: &Config, a: &SealArgs) -> anyhow::Result<()> {
    use hexpulse_lake::epoch::{self, seal as s};
    let lake = hexpulse_lake::Lake::open(&cfg.process.lake_url)?;
    let rules_path = a.rules.as_deref().or(cfg.process.rules_path.as_deref());
    let rules = hexpulse_lake::rules::Rules::load(rules_path)?;
    let out = match &a.out {
        Some(o) => hexpulse_lake::Lake::open(o)?,
        None => lake.clone(),
    };
    let ecfg = &cfg.process.epoch;
    // Epochs sealed and not (all) published in the epoch Delta tables: a crash between the two.
    let published = epoch::publish::publish_sealed(&out).await?;
    if published > 0 {
        eprintln!("published {published} output(s) of epochs sealed earlier");
    }
    let epochs: Vec<i64> = match a.epoch {
        Some(e) => vec![e],
        None => {
            let Some(due) = s::due_epochs(&out, ecfg, &rules).await? else {
                eprintln!("the lake has no data yet: nothing to seal");
                return Ok(());
            };
            due
        }
    };
    if epochs.is_empty() {
        eprintln!("no epoch has passed its end plus the allowed lateness yet");
    }
    for id in epochs {
        let req = s::SealRequest {
            input: &lake,
            output: &out,
            cfg: ecfg,
            rules: &rules,
            epoch: id,
            force: a.force,
            topic: &cfg.kafka.raw_topic,
            partitions: cfg.kafka.partitions,
        };
        match s::seal_and_publish(req).await {
            Ok(sealed) => {
                let m = sealed.manifest();
                let what = match sealed {
                    s::Sealed::New(_) => "sealed",
                    s::Sealed::Already(_) => "already sealed",
                };
                out!(
                    "epoch {id} {what}{}: {} .. {}, {} devices, root {}, {}",
                    if m.forced { " (forced)" } else { "" },
                    m.start,
                    m.end,
                    m.merkle_leaves,
                    m.merkle_root,
                    epoch::manifest_path(id)
                );
            }
            Err(epoch::EpochError::NotReady(why)) => {
                bail!("{why}\n(use --force to seal anyway; the manifest records it)")
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn epoch(cfg: Config, c: EpochCmd) -> anyhow::Result<()> {
    use hexpulse_lake::epoch::{self, seal as s};
    let lake = hexpulse_lake::Lake::open(&cfg.process.lake_url)?;
    match c {
        EpochCmd::List => {
            for id in epoch::sealed_ids(&lake).await? {
                if let Some(m) = s::read_manifest(&lake, id).await? {
                    out!(
                        "{id:>8}  {} .. {}  {:>6} devices  root {}{}",
                        m.start,
                        m.end,
                        m.merkle_leaves,
                        m.merkle_root,
                        if m.forced { "  (forced)" } else { "" }
                    );
                }
            }
        }
        EpochCmd::Show { epoch: id } => {
            let m = s::read_manifest(&lake, id)
                .await?
                .with_context(|| format!("epoch {id} is not sealed"))?;
            out!("{}", serde_json::to_string_pretty(&m)?);
        }
        EpochCmd::Proof { epoch: id, device } => {
            let p = s::build_proof(&lake, id, &device.to_ascii_lowercase()).await?;
            out!("{}", serde_json::to_string_pretty(&p)?);
        }
        EpochCmd::Verify { proof, root } => {
            let text = if proof.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&proof)
                    .with_context(|| format!("reading {}", proof.display()))?
            };
            let p: s::Proof = serde_json::from_str(&text).context("parsing the proof")?;
            let root = match root {
                Some(r) => r,
                None => {
                    s::read_manifest(&lake, p.epoch)
                        .await?
                        .with_context(|| format!("epoch {} is not sealed in this lake", p.epoch))?
                        .merkle_root
                }
            };
            s::verify_proof(&p, &root)?;
            out!(
                "ok: device {} has {} points in epoch {} (root {root})",
                p.device_key,
                p.row.get("reward_points").cloned().unwrap_or_default(),
                p.epoch
            );
        }
        EpochCmd::Diff { epoch: id, other } => {
            let b = hexpulse_lake::Lake::open(&other)?;
            let d = s::diff(&lake, &b, id).await?;
            if d.is_empty() {
                out!("no differences");
            }
            for x in &d {
                let show = |p: Option<u64>| p.map_or("-".to_string(), |p| p.to_string());
                out!(
                    "{}  points {} -> {}{}",
                    x.device_key,
                    show(x.points_a),
                    show(x.points_b),
                    x.changed
                        .iter()
                        .filter(|c| c.0 != "reward_points")
                        .map(|c| format!("  {}: {} -> {}", c.0, c.1, c.2))
                        .collect::<String>()
                );
            }
            eprintln!("{} device(s) differ", d.len());
        }
    }
    Ok(())
}

async fn compact(cfg: Config, closed_after: Option<Duration>) -> anyhow::Result<()> {
    use hexpulse_lake::compact;
    let lake = hexpulse_lake::Lake::open(&cfg.process.lake_url)?;
    let rules = hexpulse_lake::rules::Rules::load(cfg.process.rules_path.as_deref())?;
    let close_after = closed_after.unwrap_or(
        rules.time.allowed_lateness + rules.time.max_future_skew + cfg.process.compact_grace,
    );
    let cut = hexpulse_common::time::now_ms() - close_after.as_millis() as i64;
    let opts = compact::CompactOptions {
        target_bytes: cfg.process.compact_target_bytes,
        memory_bytes: cfg.process.compact_memory_bytes,
        retention: cfg.process.compact_retention,
    };
    eprintln!(
        "compacting hours of {} that ended {} ago or earlier",
        cfg.process.lake_url,
        humantime::format_duration(close_after)
    );
    let done = compact::compact_closed(&lake, cut, &opts).await?;
    for (table, date, hour, outcome) in &done {
        out!("{table} {date} {hour:02}: {outcome:?}");
    }
    eprintln!("{} hour(s) compacted", done.len());
    Ok(())
}

async fn lake(cfg: Config, c: LakeCmd) -> anyhow::Result<()> {
    use hexpulse_lake::compact;
    let lake = hexpulse_lake::Lake::open(&cfg.process.lake_url)?;
    match c {
        LakeCmd::Files { table } => {
            if !compact::tables().contains(&table.as_str()) {
                bail!(
                    "unknown table {table:?}; tables: {}",
                    compact::tables().join(", ")
                );
            }
            for f in compact::valid_files(&lake, &table).await? {
                out!("{f}");
            }
        }
        LakeCmd::Stats => {
            for table in compact::tables() {
                let (version, files) = lake.table(table).files().await?;
                let rows: u64 = files.iter().filter_map(|f| f.rows).sum();
                let version = version.map_or("-".to_string(), |v| v.to_string());
                out!(
                    "{table:10} version {version:>8} {:>8} files {rows:>12} rows",
                    files.len()
                );
            }
        }
        LakeCmd::History { table, limit } => {
            if !compact::tables().contains(&table.as_str()) {
                bail!(
                    "unknown table {table:?}; tables: {}",
                    compact::tables().join(", ")
                );
            }
            let t = lake.table(&table);
            let Some(newest) = t.latest_version().await? else {
                bail!(
                    "{table} has no Delta log yet under {}",
                    cfg.process.lake_url
                );
            };
            for v in (0..=newest).rev().take(limit) {
                let Some(actions) = t.commit_at(v).await? else {
                    out!("{v:>8} (no longer in the log: covered by a checkpoint)");
                    continue;
                };
                out!("{}", hexpulse_lake::delta::describe_commit(v, &actions));
            }
        }
        LakeCmd::Compact { closed_after } => compact(cfg, closed_after).await?,
        LakeCmd::Vacuum { retention } => {
            let retention = retention.unwrap_or(cfg.process.compact_retention);
            eprintln!(
                "deleting unreferenced files older than {}",
                humantime::format_duration(retention)
            );
            let n = compact::vacuum(&lake, retention).await?;
            eprintln!("{n} file(s) deleted");
            let n = compact::clean_log(&lake, retention).await?;
            eprintln!(
                "{n} expired log entr(y/ies) deleted (commits and checkpoints before the newest checkpoint older than that)"
            );
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
    s.presign |= a.presign;
    if let Some(share) = a.adversarial {
        s.adversarial = hexpulse_load_tests::adversary::Adversarial::uniform(share);
    }
    let mixer = cfg.simulate.mixer(cfg.ingest.max_body_bytes);
    let probe = hexpulse_load_tests::freshness::Probe::new(cfg.simulate.seed);
    if a.register {
        let mut devices = mixer.fleet.registry_devices();
        devices.push(probe.device());
        open_registry(&cfg)?.upsert_all(devices)?;
        eprintln!(
            "registered {} simulated devices and a freshness probe in {}",
            cfg.simulate.devices,
            cfg.registry.path.display()
        );
        // Ingest and the processors re-read the registry about once a second.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut run_keys = mixer.keys();
    if a.register {
        run_keys.insert(probe.key_hex());
    }
    let ledger = a.account.then(|| {
        Arc::new(std::sync::Mutex::new(
            hexpulse_load_tests::adversary::Ledger::default(),
        ))
    });
    let lake = a
        .query_url
        .as_deref()
        .map(|u| hexpulse_load_tests::account::LakeReader::new(u, a.query_token.clone()));
    let stop = shutdown::on_signals();
    let sim_done = tokio_util::sync::CancellationToken::new();
    // The probe must be a registered device: only with --register.
    if lake.is_some() && !a.register {
        eprintln!("freshness is not measured: the probe device needs --register");
    }
    let fresh = lake.clone().filter(|_| a.register).map(|lake| {
        let (target, stop, ledger) = (
            cfg.simulate.target_url.clone(),
            sim_done.clone(),
            ledger.clone(),
        );
        tokio::spawn(async move {
            probe
                .run(
                    &target,
                    &lake,
                    hexpulse_load_tests::freshness::Timing::default(),
                    stop,
                    ledger,
                )
                .await
        })
    });
    let summary =
        hexpulse_load_tests::sim::run(&cfg.simulate, mixer, stop, true, ledger.clone()).await;
    sim_done.cancel();
    let mut out = serde_json::to_value(&summary)?;
    if let Some(f) = fresh {
        out["freshness"] = serde_json::to_value(f.await?)?;
    }
    let mut mismatches = 0;
    if let (Some(ledger), Some(lake)) = (ledger, lake) {
        // The run and the probe are over: nothing writes the ledger any more.
        let ledger = std::mem::take(&mut *ledger.lock().expect("lock"));
        let report =
            hexpulse_load_tests::account::account(&ledger, &lake, &run_keys, a.settle, true)
                .await?;
        mismatches = report.mismatch_total;
        out["accounting"] = serde_json::to_value(&report)?;
    }
    let text = serde_json::to_string_pretty(&out)?;
    out!("{text}");
    if let Some(path) = a.out {
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    if mismatches > 0 {
        bail!("accounting found {mismatches} mismatches (see \"accounting\" above)");
    }
    Ok(())
}

async fn up(
    mut cfg: Config,
    no_traffic: bool,
    rate: Option<f64>,
    watch: Option<broker_watch::Watch>,
) -> anyhow::Result<()> {
    let registry = open_registry(&cfg)?;
    let mixer = cfg.simulate.mixer(cfg.ingest.max_body_bytes);
    registry.upsert_all(mixer.fleet.registry_devices())?;
    // A fresh admin token for this run unless the config names one, so that the README's registry
    // examples work under `make up`.
    let admin_token = if cfg.ingest.admin_token_sha256.is_empty() {
        let mut bytes = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
        let token = hex::encode(bytes);
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
        cfg.ingest.admin_token_sha256 = sha256.clone();
        // The query service's admin role too: its /metrics, raw tables and every group.
        cfg.query
            .auth
            .tokens
            .push(hexpulse_query::config::TokenConfig {
                name: "make-up-admin".into(),
                role: "admin".into(),
                sha256,
            });
        Some(token)
    } else {
        None
    };
    tracing::info!(config = %cfg.redacted(), "starting hexpulse up");
    let stop = shutdown::on_signals();
    let watch_note = watch.as_ref().map(|w| {
        format!(
            " (watched: restarted when it acknowledges no produce request for {})",
            humantime::format_duration(w.stall)
        )
    });
    let watch = watch.map(|w| tokio::spawn(w.run(cfg.kafka.clone(), stop.clone())));
    let ingest = Ingest::start(
        cfg.ingest.clone(),
        cfg.kafka.clone(),
        registry.clone(),
        stop.clone(),
    )
    .await?;
    let lake = hexpulse_lake::Lake::open(&cfg.process.lake_url)?;
    let processor = hexpulse_processors::run::start(
        cfg.process.clone(),
        cfg.kafka.clone(),
        registry,
        lake,
        stop.clone(),
    )
    .await?;
    let mut qcfg = cfg.query.clone();
    qcfg.lake_url = cfg.process.lake_url.clone();
    qcfg.epoch = cfg.process.epoch.clone();
    let query = hexpulse_query::Query::start(
        qcfg,
        hexpulse_lake::Lake::open(&cfg.process.lake_url)?,
        stop.clone(),
    )
    .await?;
    let base = format!("http://{}", ingest.addr);
    let qbase = format!("http://{}", query.addr);
    out!();
    out!("Hexpulse is up.");
    out!("  ingest   POST {base}/v1/readings   (protobuf or JSON batches of signed readings)");
    out!("  health   {base}/healthz  {base}/readyz");
    let metrics = ingest
        .admin_addr
        .map_or_else(|| base.clone(), |a| format!("http://{a}"));
    out!(
        "  metrics  {metrics}/metrics   processor http://{}/metrics   query {}/metrics{}",
        processor.addr,
        query
            .admin_addr
            .map_or_else(|| qbase.clone(), |a| format!("http://{a}")),
        if query.admin_addr.is_none() && admin_token.is_some() {
            " (with the admin token below)"
        } else {
            ""
        }
    );
    match &admin_token {
        Some(t) => out!(
            "  admin    {base}/v1/admin/devices   (add and remove devices; this run's token, for the \
             query service's admin role too: Authorization: Bearer {t})"
        ),
        None => {
            out!("  admin    {base}/v1/admin/devices   (the token of [ingest] admin_token_sha256)")
        }
    }
    out!(
        "  lake     {} (Delta tables: heartbeat/ sensor/ road/ rejected/, and epochs/)",
        cfg.process.lake_url
    );
    out!(
        "  broker   {}   topic {}{}",
        cfg.kafka.brokers,
        cfg.kafka.raw_topic,
        watch_note.unwrap_or_default()
    );
    out!(
        "  registry {} ({} simulated devices)",
        cfg.registry.path.display(),
        cfg.simulate.devices
    );
    let ecfg = &cfg.process.epoch;
    let current = ecfg.id_of(hexpulse_common::time::now_ms())?;
    // The commands below name this binary by its path: it is not on PATH.
    let exe =
        std::env::current_exe().map_or_else(|_| "hexpulse".into(), |p| p.display().to_string());
    let env = std::env::var("HEXPULSE_CONFIG")
        .map(|c| format!("HEXPULSE_CONFIG={c} "))
        .unwrap_or_default();
    let env = format!("{env}{exe}");
    out!(
        "  epochs   {} long (now epoch {current}); the processor seals one when every partition's \
         watermark is past its end plus the allowed lateness. Once epoch {current} has ended, to seal \
         it early and prove a device:",
        humantime::format_duration(ecfg.length)
    );
    out!("           {env} seal --epoch {current} --force; {env} epoch show --epoch {current}");
    out!(
        "           {env} epoch proof --epoch {current} --device KEY > p.json; {env} epoch verify --proof p.json"
    );
    out!("  map      {qbase}/");
    out!("  query    {qbase}/openapi.json (every route)   {qbase}/v1/epochs");
    out!("           curl -s {qbase}/v1/sql -d 'SELECT count(*) AS heartbeats FROM heartbeat'");
    out!(
        "           {qbase}/v1/coverage?bbox=13.0,52.3,13.8,52.7&res=8   (GeoJSON hexes around Berlin)"
    );
    out!("           {qbase}/v1/deadzones?bbox=13.0,52.3,13.8,52.7&res=8");
    out!("           {qbase}/v1/sensors/series?metric=pm2_5&bbox=13.0,52.3,13.8,52.7&interval=5m");
    out!(
        "           {qbase}/v1/tiles/coverage/{{z}}/{{x}}/{{y}}.mvt   (vector tiles: coverage, air, road)"
    );
    out!("Ctrl-C stops everything.");
    out!();
    let traffic = if no_traffic {
        None
    } else {
        cfg.simulate.target_url = base;
        if let Some(r) = rate {
            cfg.simulate.rate = r;
        }
        let stop = stop.clone();
        Some(tokio::spawn(async move {
            hexpulse_load_tests::sim::run(&cfg.simulate, mixer, stop, true, None).await
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
        out!("{}", serde_json::to_string_pretty(&summary)?);
    }
    if let Some(w) = watch {
        let _ = w.await;
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
            out!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }
        BenchCmd::Ingest {
            readings,
            batch,
            concurrency,
            out,
        } => bench::ingest(cfg, readings, batch, concurrency, out).await,
        BenchCmd::Process { readings, out } => bench::process(cfg, readings, out).await,
        BenchCmd::Query {
            readings,
            runs,
            python,
            lake,
            out,
        } => bench_query::query(readings, runs, python, lake, out).await,
        BenchCmd::E2e(args) => bench_e2e::e2e(cfg, args).await,
        BenchCmd::Lake(args) => bench_lake::lake(args).await,
        BenchCmd::Seal(args) => bench_seal::seal(args).await,
    }
}

#[cfg(test)]
mod tests {
    use hexpulse_lake::epoch::EpochError;

    #[test]
    fn a_round_waits_on_the_not_ready_error_type_only() {
        let waiting = anyhow::Error::from(EpochError::NotReady("epoch 7 is not complete".into()));
        assert!(super::not_ready(&waiting));
        assert!(super::not_ready(&waiting.context("sealing epoch 7")));
        // The same words in another error are a failure, not a wait.
        let other = anyhow::Error::from(EpochError::Invalid("epoch 7 is not complete".into()));
        assert!(!super::not_ready(&other));
        assert!(!super::not_ready(&anyhow::anyhow!("is not complete")));
    }
}
