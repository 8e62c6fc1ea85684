//! The fuzz targets' bodies, one function per target ([`TARGETS`]): `cargo fuzz` (fuzz/, libFuzzer)
//! calls them, and the tests below run them over the seeds, the saved crash inputs and inputs
//! mutated from the seeds, in the ordinary test build. Each takes any bytes and panics only on a
//! finding: an invariant that must hold whatever the input.

use std::sync::OnceLock;

use bytes::Bytes;
use hexpulse_common::registry::{Device, Registry};
use hexpulse_ingest::body::{self, Format, RawItem};
use hexpulse_ingest::pipeline;
use hexpulse_schemas::check;
use hexpulse_schemas::sign;
use hexpulse_schemas::wire::KindName;

/// A target's body: any bytes in, a panic only on a finding.
pub type Target = fn(&[u8]);

/// The targets, by name: fuzz/fuzz_targets/NAME.rs calls the function, fuzz/seeds/NAME/ holds its
/// seeds.
pub const TARGETS: [(&str, Target); 5] = [
    ("batch_protobuf", batch_protobuf),
    ("batch_json", batch_json),
    ("compressed_body", compressed_body),
    ("sql_request", sql_request),
    ("query_params", query_params),
];

/// `POST /v1/readings` with a protobuf body: decoding, the registry look-up and batch signature
/// verification.
pub fn batch_protobuf(data: &[u8]) {
    ingest_body(Format::Protobuf, Bytes::copy_from_slice(data));
}

/// `POST /v1/readings` with `Content-Type: application/json`: the JSON batch, hex and base64 fields,
/// JSON payloads, the registry look-up and batch signature verification.
pub fn batch_json(data: &[u8]) {
    ingest_body(Format::Json, Bytes::copy_from_slice(data));
}

/// A compressed body (the first byte picks gzip or zstd, protobuf or JSON): never more than the limit
/// once decompressed, then decoded as a batch.
pub fn compressed_body(data: &[u8]) {
    const LIMIT: usize = 1 << 20;
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let encoding = if pick & 1 == 0 { "gzip" } else { "zstd" };
    let format = if pick & 2 == 0 {
        Format::Protobuf
    } else {
        Format::Json
    };
    let Ok(plain) = body::decompress(Some(encoding), Bytes::copy_from_slice(rest), LIMIT) else {
        return;
    };
    assert!(plain.len() <= LIMIT, "decompressed past the limit");
    ingest_body(format, plain);
}

/// `POST /v1/sql` (the first byte picks a JSON or plain body) as planned for a caller without `raw`:
/// no permitted plan scans a private table.
pub fn sql_request(data: &[u8]) {
    use hexpulse_query::sql as q;
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let content_type = (pick & 1 == 1).then_some("application/json");
    let Ok(text) = q::request_text(content_type, body) else {
        return;
    };
    if let Ok(plan) = sql::runtime().block_on(q::plan(sql::context(), &text, false)) {
        let scanned = q::scanned_tables(&plan);
        assert!(
            !scanned
                .iter()
                .any(|t| q::PRIVATE_TABLES.contains(&t.as_str())),
            "a permitted plan scans a private table: {scanned:?}"
        );
    }
}

/// A GET of one of the query service's routes (the first byte picks it) with the rest as its path
/// and query: the service answers, never with a 5xx other than 503.
pub fn query_params(data: &[u8]) {
    const ROUTES: [&str; 12] = [
        "/v1/coverage?",
        "/v1/deadzones?",
        "/v1/sensors/hexes?",
        "/v1/sensors/series?",
        "/v1/road/hexes?",
        "/v1/tiles/",
        "/v1/tiles/coverage/",
        "/v1/epochs/",
        "/v1/epochs/1/devices?",
        "/v1/epochs/1/devices/",
        "/v1/coverage?res=8&bbox=",
        "/v1/sensors/series?metric=pm25&",
    ];
    let Some((&pick, tail)) = data.split_first() else {
        return;
    };
    let mut target = String::from(ROUTES[usize::from(pick) % ROUTES.len()]);
    for &b in tail.iter().take(512) {
        if b.is_ascii_graphic() && b != b'#' {
            target.push(char::from(b));
        } else {
            target.push_str(&format!("%{b:02X}"));
        }
    }
    let status = service::get(&target);
    assert!(
        status.is_some_and(|s| s < 500 || s == 503),
        "GET {target}: {status:?}"
    );
}

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
fn ingest_body(format: Format, body: Bytes) {
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
mod sql {
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
            let lake = hexpulse_lake::Lake::open(&dir.path().display().to_string()).expect("lake");
            let catalog = runtime()
                .block_on(Catalog::open(lake, Default::default(), 64 << 20, None))
                .expect("catalog");
            catalog.sql_context(false)
        })
    }
}

/// The query service over an empty lake, started once per fuzzing process, for the targets that
/// send it requests (`query_params`).
mod service {
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
        write!(
            s,
            "GET {target} HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }
}

/// Every target over its seeds (fuzz/seeds/TARGET/, where a fixed finding's input also goes) and
/// over inputs mutated from them, deterministically: the fuzz targets' invariants in the ordinary
/// test build. (libFuzzer's coverage-guided runs: `make fuzz`.)
#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn repo() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("testkit/ is in the repository")
    }

    fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = repo().join("fuzz/seeds").join(target);
        let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| {
                let path = e.expect("seed entry").path();
                let bytes = std::fs::read(&path).expect("seed file");
                (path.display().to_string(), bytes)
            })
            .collect();
        out.sort();
        out
    }

    /// One of libFuzzer's kinds of mutation, at random: flip a bit, set a byte to an interesting
    /// value, insert or erase a run, truncate, copy a chunk within, or splice another seed in.
    fn mutate(rng: &mut SmallRng, input: &[u8], other: &[u8]) -> Vec<u8> {
        let mut v = input.to_vec();
        for _ in 0..rng.random_range(1..=4) {
            let at = |rng: &mut SmallRng, len: usize| rng.random_range(0..=len);
            match rng.random_range(0..7) {
                0 if !v.is_empty() => {
                    let i = rng.random_range(0..v.len());
                    v[i] ^= 1 << rng.random_range(0..8);
                }
                1 if !v.is_empty() => {
                    let i = rng.random_range(0..v.len());
                    v[i] = [0x00, 0xff, 0x7f, 0x80, b'"', b'{', b'-', b'9'][rng.random_range(0..8)];
                }
                2 => {
                    let i = at(rng, v.len());
                    let n = rng.random_range(1..=16);
                    let fill: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                    v.splice(i..i, fill);
                }
                3 if !v.is_empty() => {
                    let i = rng.random_range(0..v.len());
                    let j = (i + rng.random_range(1..=32)).min(v.len());
                    v.drain(i..j);
                }
                4 => v.truncate(at(rng, v.len())),
                5 if !v.is_empty() => {
                    let i = rng.random_range(0..v.len());
                    let j = (i + rng.random_range(1..=64)).min(v.len());
                    let chunk = v[i..j].to_vec();
                    let k = at(rng, v.len());
                    v.splice(k..k, chunk);
                }
                _ => {
                    let i = at(rng, v.len());
                    let j = at(rng, other.len());
                    v.truncate(i);
                    v.extend_from_slice(&other[j..]);
                }
            }
        }
        v
    }

    /// Runs `target` over its seeds and `mutations` inputs made from them; on a finding, saves the
    /// input to test-output/fuzz/ (to replay: `scripts/fuzz.sh run TARGET-file-path`) and fails.
    fn run(target: &str, mutations: usize) {
        let f = super::TARGETS
            .iter()
            .find(|(name, _)| *name == target)
            .expect("a target")
            .1;
        let seeds = seeds(target);
        assert!(!seeds.is_empty(), "{target} has seeds");
        let mut rng = SmallRng::seed_from_u64(0x5eed ^ target.len() as u64);
        let mutated = (0..mutations).map(|i| {
            let a = &seeds[rng.random_range(0..seeds.len())].1;
            let b = &seeds[rng.random_range(0..seeds.len())].1;
            (format!("mutation {i}"), mutate(&mut rng, a, b))
        });
        for (name, input) in seeds.clone().into_iter().chain(mutated) {
            if std::panic::catch_unwind(|| f(&input)).is_err() {
                let dir = repo().join("test-output/fuzz");
                std::fs::create_dir_all(&dir).expect("test-output/fuzz");
                let path: PathBuf = dir.join(format!("{target}-finding-{}", input.len()));
                std::fs::write(&path, &input).expect("save the input");
                panic!(
                    "{target}: {name} found a failure (panic above); input saved to {}",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn batch_protobuf_holds_on_seeds_and_mutations() {
        run("batch_protobuf", 3000);
    }

    #[test]
    fn batch_json_holds_on_seeds_and_mutations() {
        run("batch_json", 3000);
    }

    #[test]
    fn compressed_body_holds_on_seeds_and_mutations() {
        run("compressed_body", 3000);
    }

    #[test]
    fn sql_request_holds_on_seeds_and_mutations() {
        run("sql_request", 2000);
    }

    #[test]
    fn query_params_holds_on_seeds_and_mutations() {
        run("query_params", 1000);
    }

    #[test]
    fn every_target_has_a_libfuzzer_entry_and_seeds() {
        let root = repo().join("fuzz");
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("fuzz/Cargo.toml");
        for (name, _) in super::TARGETS {
            let source = std::fs::read_to_string(root.join(format!("fuzz_targets/{name}.rs")))
                .unwrap_or_else(|e| panic!("fuzz/fuzz_targets/{name}.rs: {e}"));
            assert!(source.contains(&format!("hexpulse_testkit::fuzz::{name}(")));
            assert!(manifest.contains(&format!("name = \"{name}\"")));
            assert!(!seeds(name).is_empty());
        }
    }
}
