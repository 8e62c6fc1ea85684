//! Shared parts of the fuzz targets: the registry of the test-vector devices, and the checks every
//! decoded batch must pass whatever the input.

use std::sync::OnceLock;

use bytes::Bytes;
use hexpulse_common::registry::{Device, Registry};
use hexpulse_ingest::body::{self, Format, RawItem};
use hexpulse_ingest::pipeline;
use hexpulse_schemas::check;
use hexpulse_schemas::sign;
use hexpulse_schemas::wire::KindName;

/// Items per batch, as ingest's default `max_items`.
pub const MAX_ITEMS: usize = 5000;

const VECTORS: &str = include_str!("../../schemas/testdata/vectors.json");

/// A registry with every public key of the test vectors (as heartbeat, sensor and road devices by
/// the vector's reading), so fuzzed items built from the seeds reach signature verification.
pub fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| {
        let v: serde_json::Value = serde_json::from_str(VECTORS).expect("vectors parse");
        let mut devices = std::collections::BTreeMap::new();
        for vec in v["vectors"].as_array().expect("vectors") {
            let Some(key) = vec["public_key"].as_str() else {
                continue;
            };
            if key.len() != 64 || vec["expected"] == "weak_key" {
                continue;
            }
            let reading = &vec["reading"];
            let kind = if reading.get("sensor").is_some() {
                KindName::Sensor
            } else if reading.get("road").is_some() {
                KindName::Road
            } else {
                KindName::Heartbeat
            };
            devices.entry(key.to_string()).or_insert(Device {
                public_key: key.to_string(),
                kind,
                lat: 52.52,
                lng: 13.405,
                owner: "fuzz".into(),
            });
        }
        Registry::from_devices(devices.into_values().collect()).unwrap_or_default()
    })
}

/// Decodes `body` as ingest does and checks it; panics (a finding) if an invariant breaks:
/// one verdict per item, and an item accepted by the batch verifier also verifies alone.
pub fn ingest_body(format: Format, body: Bytes) {
    let Ok(items) = body::parse_batch(format, body, MAX_ITEMS) else {
        return;
    };
    assert!(items.len() <= MAX_ITEMS, "more items than the limit");
    check_items(&items);
}

fn check_items(items: &[RawItem]) {
    // One estimate across the run, so the verifier's plan varies with what the inputs held before;
    // verdicts must not.
    static BAD_SHARE: sign::BadShare = sign::BadShare::new();
    let checked = pipeline::check_batch(items, registry(), &BAD_SHARE);
    assert_eq!(checked.verdicts.len(), items.len(), "one verdict per item");
    for (item, verdict) in items.iter().zip(&checked.verdicts) {
        if verdict.is_err() {
            continue;
        }
        let env = item.envelope.as_ref().expect("accepted items decoded");
        let decoded = check::decode_envelope(env).expect("accepted items decode alone");
        let key = check::parse_key(env).expect("accepted items have a valid key");
        sign::verify(&key, &env.payload, &decoded.signature)
            .expect("accepted by the batch verifier, so valid alone");
    }
}

/// The SQL target's query context: the catalog of an empty lake, as the query service builds it.
pub mod sql {
    use std::sync::OnceLock;

    use hexpulse_query::catalog::Catalog;
    use hexpulse_query::datafusion::prelude::SessionContext;

    /// A current-thread runtime for the async planner.
    pub fn runtime() -> &'static tokio::runtime::Runtime {
        static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        RT.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
        })
    }

    /// The session context that SQL from a caller without `raw` runs in, over an empty lake.
    pub fn context() -> &'static SessionContext {
        static CTX: OnceLock<SessionContext> = OnceLock::new();
        CTX.get_or_init(|| {
            let dir = Box::leak(Box::new(tempfile::tempdir().expect("temp dir")));
            let lake = hexpulse_lake::Lake::open(&dir.path().display().to_string())
                .expect("lake");
            let catalog = runtime()
                .block_on(Catalog::open(lake, Default::default(), 64 << 20))
                .expect("catalog");
            catalog.sql_context(false)
        })
    }
}

/// The query service over an empty lake, started once per fuzzing process, for the targets that
/// send it requests (`query_params`).
pub mod service {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::sync::OnceLock;
    use std::time::Duration;

    /// The address of a query service (every group public, as under `make up`) over an empty lake.
    pub fn addr() -> SocketAddr {
        static ADDR: OnceLock<SocketAddr> = OnceLock::new();
        *ADDR.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let url = dir.path().display().to_string();
                    let mut cfg = hexpulse_query::QueryConfig::for_tests(&url);
                    cfg.query_timeout = Duration::from_secs(5);
                    let lake = hexpulse_lake::Lake::open(&url).expect("lake");
                    let stop = tokio_util::sync::CancellationToken::new();
                    let q = hexpulse_query::Query::start(cfg, lake, stop)
                        .await
                        .expect("query service");
                    tx.send(q.addr).expect("send");
                    std::future::pending::<()>().await;
                    drop(dir);
                });
            });
            rx.recv().expect("query service address")
        })
    }

    /// `GET target` (sent as given), the answer's status code; `None` when no status line came.
    pub fn get(target: &str) -> Option<u16> {
        let mut s = TcpStream::connect(addr()).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        write!(s, "GET {target} HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n").ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }
}
