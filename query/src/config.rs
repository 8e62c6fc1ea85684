//! The `[query]` section of the config.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hexpulse_common::ratelimit::RateLimit;
use hexpulse_common::serve::TlsConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    /// HTTP listener.
    pub listen: SocketAddr,
    /// A second listener for operators, without auth: `/metrics`, `/healthz`, `/readyz` only (for
    /// a Prometheus that a network policy lets in). `/metrics` on `listen` stays behind the
    /// `metrics` group.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// The PostgreSQL wire protocol's listener (psql, DBeaver, Grafana, psycopg): the password is a
    /// token, and the same rules apply as on `POST /v1/sql` ([`crate::gate`]). Unset: off.
    #[serde(default)]
    pub pg_listen: Option<SocketAddr>,
    /// TLS on the PostgreSQL door (`cert_pem`, `key_pem`). Set, the door requires it: a client that
    /// does not ask for TLS (`sslmode=disable`) is refused (28000), since its password is a token.
    /// Unset: plain text (keep the door on loopback or a private network).
    #[serde(default)]
    pub pg_tls: Option<TlsConfig>,
    /// The Arrow Flight SQL listener (ADBC, JDBC, `arrow-flight`'s CLI): a bearer token in
    /// `authorization`, or Flight's handshake with basic auth (password = a token); the same rules
    /// as `POST /v1/sql`. Unset: off.
    #[serde(default)]
    pub flight_listen: Option<SocketAddr>,
    /// TLS on the Flight SQL door (`grpc+tls://`); set, the door speaks nothing else. Unset: plain
    /// gRPC (`grpc://`).
    #[serde(default)]
    pub flight_tls: Option<TlsConfig>,
    /// The lake (same as `process.lake_url` unless the query service reads a replica).
    pub lake_url: String,
    /// The rules file (for the k-anonymity threshold of road data); none: the built-in rules.
    #[serde(default)]
    pub rules_path: Option<PathBuf>,
    /// At most this many rows in one SQL answer (more: 413 with a clear error).
    pub max_rows: usize,
    /// At most this many hexes in one map answer (more: 413; ask for a smaller area or resolution).
    pub max_features: usize,
    /// A query running longer than this is cancelled (408).
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// Memory DataFusion may use for all queries together, bytes.
    pub memory_limit_bytes: usize,
    /// Bytes DataFusion may spill to its temporary directory (sorts, aggregates), for all queries
    /// together; past it a query that needs to spill gets 413 `memory_limit`. Keep it below the
    /// space of the temporary directory (`TMPDIR`; k8s: the `/tmp` emptyDir).
    #[serde(default = "default_spill_bytes")]
    pub max_spill_bytes: u64,
    /// Bytes that one query's string and list expressions may build per batch and thread, shared
    /// among them (`repeat`, `lpad`, `||`, `range`, `h3_grid_disk`, ...); DataFusion's pool does
    /// not see these. Past it: 413 `memory_limit`. See `query/src/bounded.rs`.
    #[serde(default = "default_expression_bytes")]
    pub max_expression_bytes: u64,
    /// Bytes of one SQL answer (the batches, and the encoded body). Past it: 413 `answer_limit`.
    #[serde(default = "default_answer_bytes")]
    pub max_answer_bytes: usize,
    /// At most this many queries run at once; more wait up to `query_timeout`, then get 503.
    pub max_concurrent_queries: usize,
    /// Threads of the runtime that executes query plans (0: the number of cores). HTTP and the
    /// health checks stay on the I/O runtime, so heavy plans cannot starve them.
    pub query_threads: usize,
    /// How long one HTTP request may take end to end (408 past it), and how long a client may take
    /// to send its headers (the connection is closed past it: slowloris). At least `query_timeout`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Open connections on `listen` at most; more are closed as they arrive. A connection's first
    /// byte must arrive within `request_timeout`, and one that makes no progress for twice as long
    /// is closed.
    #[serde(default = "hexpulse_common::serve::default_max_connections")]
    pub max_connections: usize,
    /// Requests per caller: per token (by its name), or per client IP for calls without a token.
    /// Past it: 429 `rate_limited` with `Retry-After`. `/healthz` and `/readyz` are not limited.
    pub rate_per_client: RateLimit,
    /// Proxies (CIDRs) whose `X-Forwarded-For` names callers without a token: only a TCP peer
    /// inside one of them is believed (`ratelimit::client_ip`). Empty: the TCP peer is the caller.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How often the catalog re-lists the lake (new files, compactions, sealed epochs).
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Who may use what.
    pub auth: AuthConfig,
    /// The map page at `/`.
    pub map: MapConfig,
    /// The processors' live rows (`[query.live]`).
    #[serde(default)]
    pub live: LiveConfig,
    /// The device status cache (`[query.status]`, [`crate::status`]).
    #[serde(default)]
    pub status: crate::status::StatusConfig,
    /// Pilots (`[query.pilots]`, [`crate::pilots`]).
    #[serde(default)]
    pub pilots: crate::pilots::PilotsConfig,
    /// Alert rules and the alerts role (`[query.alerts]`, [`crate::alerts`]).
    #[serde(default)]
    pub alerts: crate::alerts::AlertsConfig,
    /// The epochs (length, origin): always the processors' `[process.epoch]`, copied in by the
    /// binary, so the two cannot disagree.
    #[serde(skip)]
    pub epoch: hexpulse_lake::epoch::EpochConfig,
}

/// The live tier: rows the processors have validated but not yet committed to the lake
/// (`query::live`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveConfig {
    /// The processors' listeners, `http://host:port` (a name with several addresses means each of
    /// them, e.g. a headless Kubernetes service). Empty: answers hold the lake alone.
    #[serde(default)]
    pub sources: Vec<String>,
    /// How often each source is asked for its new rows.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// What the mirror of live rows may hold; past it polling waits until the lake catches up.
    pub memory_bytes: usize,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            sources: Vec::new(),
            poll_interval: Duration::from_millis(100),
            memory_bytes: 256 << 20,
        }
    }
}

/// The map page.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapConfig {
    /// A MapLibre style URL for a basemap (none: the built-in basemap, embedded in the binary, and no
    /// request leaves Hexpulse).
    #[serde(default)]
    pub style_url: Option<String>,
    /// Where the map opens: [lng, lat] and zoom.
    pub center: [f64; 2],
    pub zoom: f64,
}

impl Default for MapConfig {
    fn default() -> Self {
        MapConfig {
            style_url: None,
            center: [13.405, 52.52],
            zoom: 10.0,
        }
    }
}

/// Bearer tokens, roles and the endpoint groups each role may use.
///
/// Endpoint groups: `coverage` (hex maps, dead zones, coverage tiles), `sensors`, `road`, `epochs`,
/// `sql`, `raw` (SQL over raw dashcam rows and their locations), `metrics`, `map` (the web page),
/// `meta` (`/openapi.json`), `devices` (device status), `pilots` (reading pilots),
/// `pilots_write` (creating, ending and deleting them), `alerts` (reading alert rules) and `alerts_write`
/// (creating and deleting them). `/healthz` and `/readyz` are always open.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Tokens are stored as the hex SHA-256 of the token, never in clear
    /// (`printf %s "$TOKEN" | sha256sum`).
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Role name → endpoint groups (`*` = all).
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    /// Endpoint groups anyone may use without a token (`*` = all).
    #[serde(default)]
    pub public: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A label for logs and metrics.
    pub name: String,
    pub role: String,
    /// Hex SHA-256 of the bearer token.
    pub sha256: String,
}

fn default_expression_bytes() -> u64 {
    64 << 20
}

fn default_spill_bytes() -> u64 {
    1 << 30
}

fn default_answer_bytes() -> usize {
    64 << 20
}

impl QueryConfig {
    pub fn for_tests(lake_url: &str) -> QueryConfig {
        QueryConfig {
            listen: "127.0.0.1:0".parse().expect("static"),
            admin_listen: None,
            pg_listen: None,
            pg_tls: None,
            flight_listen: None,
            flight_tls: None,
            lake_url: lake_url.into(),
            rules_path: None,
            max_rows: 10_000,
            max_features: 20_000,
            query_timeout: Duration::from_secs(5),
            memory_limit_bytes: 512 << 20,
            max_expression_bytes: default_expression_bytes(),
            max_spill_bytes: default_spill_bytes(),
            max_answer_bytes: default_answer_bytes(),
            max_concurrent_queries: 4,
            query_threads: 2,
            refresh_interval: Duration::from_millis(500),
            request_timeout: Duration::from_secs(30),
            max_connections: hexpulse_common::serve::default_max_connections(),
            rate_per_client: RateLimit::OFF,
            trusted_proxies: Vec::new(),
            // Everything open, raw rows too (named: "*" alone leaves them out).
            auth: AuthConfig {
                public: vec!["*".into(), "raw".into()],
                ..AuthConfig::default()
            },
            epoch: Default::default(),
            map: MapConfig::default(),
            live: LiveConfig::default(),
            status: crate::status::StatusConfig::default(),
            pilots: crate::pilots::PilotsConfig::default(),
            alerts: crate::alerts::AlertsConfig::default(),
        }
    }
}
