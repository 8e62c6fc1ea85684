//! The command line: `hexpulse <role or tool> [options]` (clap).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::bench;

#[derive(Debug, Parser)]
#[command(
    name = "hexpulse",
    version,
    about = "Hexpulse: signed DePIN device data into an H3 Parquet lake"
)]
pub(crate) struct Cli {
    /// Config file (TOML); overrides the embedded defaults. Repeat it (or separate paths by commas
    /// in HEXPULSE_CONFIG) to layer files: later files win. Env HEXPULSE__SECTION__KEY overrides all.
    #[arg(long, short, env = "HEXPULSE_CONFIG", global = true)]
    pub(crate) config: Vec<PathBuf>,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
    /// Run the ingest service (devices POST signed batches; enqueued into Kafka).
    Ingest,
    /// Bridge an MQTT broker's device topics into Kafka ([mqtt]), with ingest's checks and limits.
    Mqtt,
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
    /// Run the alerts role: evaluate the alert rules ([query.alerts], /v1/alerts/rules) over the
    /// lake and deliver what fires to the rules' webhooks, signed, retried, once per firing.
    Alerts,
    /// Send simulated device traffic to an ingest endpoint.
    Simulate(SimArgs),
    /// Run every built role in one process, with demo traffic, and print the URLs.
    Up(UpArgs),
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
pub(crate) struct UpArgs {
    /// Do not start the demo traffic.
    #[arg(long)]
    pub(crate) no_traffic: bool,
    /// Demo traffic rate in readings per second (default from [simulate]).
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// A shell command that restarts the broker on its durable storage. With it, `up` probes
    /// the broker with a produce request every few seconds and runs the command when none was
    /// acknowledged for --broker-stall (`make up` passes `scripts/broker.sh restart sqlite PORT`).
    #[arg(long, value_name = "COMMAND")]
    pub(crate) broker_restart: Option<String>,
    /// How long without an acknowledged probe counts as a wedged broker.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) broker_stall: Duration,
    /// Also run the MQTT bridge against the MQTT broker of [mqtt] (`make up` passes it when
    /// Mosquitto is installed or UP_MQTT_BROKER is set).
    #[arg(long)]
    pub(crate) mqtt: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SimArgs {
    /// Ingest base URL (HTTP and gRPC).
    #[arg(long)]
    pub(crate) target_url: Option<String>,
    /// The door to send through: http (POST /v1/readings), grpc (the hexpulse.v1.Ingest/Stream
    /// stream at --target-url) or mqtt (QoS 1 messages through the bridge's MQTT broker).
    #[arg(long)]
    pub(crate) via: Option<hexpulse_load_tests::door::Via>,
    /// The MQTT broker (host:port) for --via mqtt (default from [simulate] mqtt_broker).
    #[arg(long)]
    pub(crate) mqtt_broker: Option<String>,
    /// Readings per second (0 = flat out).
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Stop after this many readings.
    #[arg(long)]
    pub(crate) count: Option<u64>,
    /// Stop after this long, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) duration: Option<Duration>,
    #[arg(long)]
    pub(crate) devices: Option<usize>,
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    #[arg(long)]
    pub(crate) concurrency: Option<usize>,
    /// Build and sign every reading before the clock starts (needs --count, or --rate and
    /// --duration), so signing does not compete with the pipeline for CPU, as devices sign on
    /// their own hardware. Readings are timestamped when built.
    #[arg(long)]
    pub(crate) presign: bool,
    /// Also write the simulated devices into the registry file.
    #[arg(long)]
    pub(crate) register: bool,
    /// Send every adversarial class at this share (of readings; of requests for malformed and
    /// oversize bodies), e.g. 0.01. Per-class shares: [simulate.adversarial] in the config.
    #[arg(long)]
    pub(crate) adversarial: Option<f64>,
    /// The query service; with it the run measures freshness (a probe device, registered with
    /// --register) and, with --account, checks the lake.
    #[arg(long)]
    pub(crate) query_url: Option<String>,
    /// Bearer token for the query service (needs the `raw` group for accounting).
    #[arg(long, env = "HEXPULSE_QUERY_TOKEN", hide_env_values = true)]
    pub(crate) query_token: Option<String>,
    /// After the run, compare every reading sent with the lake (needs --query-url); exits non-zero
    /// on any mismatch.
    #[arg(long, requires = "query_url")]
    pub(crate) account: bool,
    /// How long accounting waits for the lake to catch up.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
    pub(crate) settle: Duration,
    /// Write the JSON summary (with accounting and freshness) here too.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SealArgs {
    /// The epoch to seal.
    #[arg(long)]
    pub(crate) epoch: Option<i64>,
    /// Seal even though some partition's watermark has not passed the epoch end plus the lateness
    /// (recorded in the manifest as forced).
    #[arg(long)]
    pub(crate) force: bool,
    /// Compute under these rules instead (a re-run; needs --out).
    #[arg(long, requires = "out")]
    pub(crate) rules: Option<PathBuf>,
    /// Write the epoch folder under this directory (or object store URL) instead of the lake, leaving
    /// the sealed epoch untouched.
    #[arg(long)]
    pub(crate) out: Option<String>,
    /// Keep running: seal every complete epoch, then look again after this long (e.g. 1m), until
    /// Ctrl-C. For a sealer scheduled apart from the processors.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "epoch")]
    pub(crate) every: Option<Duration>,
    /// With --every: serve /healthz, /readyz and /metrics (Prometheus) here, e.g. 0.0.0.0:9090.
    /// /readyz fails while the last round ended in an error.
    #[arg(long, requires = "every")]
    pub(crate) listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum EpochCmd {
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
pub(crate) enum LakeCmd {
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
pub(crate) enum BenchCmd {
    /// Ingest throughput per ingest core against the raw Ed25519 batch-verify rate.
    Ingest {
        /// Pre-signed readings to send through each door in each round.
        #[arg(long, default_value_t = 200_000)]
        readings: usize,
        #[arg(long, default_value_t = 500)]
        batch: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Rounds of every door in turn; each door's figure is its median round.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// An MQTT broker (HOST:PORT) to run the MQTT door through as well (`hexpulse mqtt`);
        /// without it, only HTTP and gRPC are measured.
        #[arg(long, value_name = "HOST:PORT")]
        mqtt_broker: Option<String>,
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
    E2e(bench::e2e::E2eArgs),
    /// The Delta log over a simulated day of the processors' commits: commits per second, commit
    /// latency, log size, and the time to open and to refresh a table at the end of the day.
    Lake(bench::lake::LakeArgs),
    /// Sealing one large epoch within a memory budget: time, spill and peak RSS.
    Seal(bench::seal::SealArgs),
    /// One large answer (1M rows of `sensor`) through each SQL door (Flight SQL, PostgreSQL, HTTP
    /// JSON/CSV/Arrow) against DataFusion in-process: rows per second and the ratio.
    Doors(bench::doors::DoorsArgs),
    /// Device status over a lake of 100k devices: the cache's first read, and the latency of one
    /// device's status and of a city's devices.
    Status(bench::status::StatusArgs),
}
