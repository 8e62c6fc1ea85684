//! How tests find the local broker started by `make test` (`scripts/broker.sh`).
//!
//! `HEXPULSE_TEST_BROKER` holds its `host:port`. Under `make test`, `HEXPULSE_REQUIRE_BROKER=1` is set
//! too, and a missing broker is a failure. In a bare `cargo test` run, broker tests skip, loudly.

/// Env variable with the test broker's bootstrap address.
pub const BROKER_ENV: &str = "HEXPULSE_TEST_BROKER";
/// Env variable that turns a missing broker into a test failure.
pub const REQUIRE_ENV: &str = "HEXPULSE_REQUIRE_BROKER";

/// The test broker's address, or `None` (after a loud message) when tests should skip.
///
/// # Panics
/// When no broker is configured but `HEXPULSE_REQUIRE_BROKER` is set.
pub fn broker_or_skip(test: &str) -> Option<String> {
    match std::env::var(BROKER_ENV) {
        Ok(b) if !b.is_empty() => Some(b),
        _ => {
            if std::env::var_os(REQUIRE_ENV).is_some() {
                panic!(
                    "{test}: {BROKER_ENV} is not set but {REQUIRE_ENV} is: the broker harness did not start"
                );
            }
            eprintln!(
                "\n*** SKIPPING {test}: no Kafka broker ({BROKER_ENV} unset). Run `make test` to run it. ***\n"
            );
            None
        }
    }
}

/// Debian's `mosquitto` broker and its clients (`HEXPULSE_MOSQUITTO`: the broker binary, its
/// clients beside it in PATH), which `make test` installs; `None` (skip) without them outside it.
pub fn mosquitto_or_skip(test: &str) -> Option<String> {
    let found = std::env::var("HEXPULSE_MOSQUITTO")
        .ok()
        .filter(|p| !p.is_empty())
        .or_else(|| {
            ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
                .map(str::to_string)
        });
    if found.is_none() {
        assert!(
            std::env::var_os(REQUIRE_ENV).is_none(),
            "{test}: make test must install mosquitto (scripts/test.sh)"
        );
        eprintln!(
            "\n*** SKIPPING {test}: mosquitto is not installed. Run `make test` to run it. ***\n"
        );
    }
    found
}

/// The Python of the cached venv with the outside readers (DuckDB, deltalake; `HEXPULSE_PYTHON`), or
/// `None` (after a loud message) when tests should skip.
///
/// # Panics
/// When it is not set but `HEXPULSE_REQUIRE_BROKER` is (as under `make test`).
pub fn python_or_skip(test: &str) -> Option<String> {
    match std::env::var("HEXPULSE_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            assert!(
                std::env::var_os(REQUIRE_ENV).is_none(),
                "{test}: make test must set HEXPULSE_PYTHON"
            );
            eprintln!(
                "\n*** SKIPPING {test}: HEXPULSE_PYTHON unset. Run `make test` to run it. ***\n"
            );
            None
        }
    }
}

/// A topic name unique to this test run, so tests sharing one broker do not see each other's data.
pub fn unique_topic(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A tansu broker of a test's own (durable sqlite storage, in a temporary cache), started and
/// stopped through `scripts/broker.sh` (`HEXPULSE_BROKER_SCRIPT`, `HEXPULSE_TANSU_BIN`; `make test`
/// sets both), so a test can take it away and bring it back. Stopped on drop.
pub struct OwnBroker {
    script: String,
    cache: std::path::PathBuf,
    pub port: u16,
    /// `sqlite` (durable across restarts) or `memory`.
    storage: &'static str,
}

impl OwnBroker {
    /// None when the scripts are not configured (outside `make test`); starts nothing yet.
    pub fn new(cache: &std::path::Path) -> Option<OwnBroker> {
        let script = std::env::var("HEXPULSE_BROKER_SCRIPT").ok()?;
        std::env::var("HEXPULSE_TANSU_BIN").ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        Some(OwnBroker {
            script,
            cache: cache.to_path_buf(),
            port,
            storage: "sqlite",
        })
    }

    /// A broker of `test`'s own, or `None` (after a loud message) when tests should skip: no test
    /// broker at all, or no broker script outside `make test` (under `make test` that fails).
    pub fn for_test(test: &str, cache: &std::path::Path) -> Option<OwnBroker> {
        broker_or_skip(test)?;
        let broker = OwnBroker::new(cache);
        if broker.is_none() {
            assert!(
                std::env::var_os(REQUIRE_ENV).is_none(),
                "make test must set HEXPULSE_BROKER_SCRIPT and HEXPULSE_TANSU_BIN"
            );
            eprintln!("*** SKIPPING {test}: no broker script (make test sets it) ***");
        }
        broker
    }

    /// The same broker with in-memory storage: survives [`OwnBroker::pause`], not a restart.
    pub fn in_memory(mut self) -> OwnBroker {
        self.storage = "memory";
        self
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn run(&self, args: &[&str]) {
        let out = std::process::Command::new(&self.script)
            .args(args)
            .env("HEXPULSE_CACHE", &self.cache)
            .env(
                "TANSU_BIN",
                std::env::var("HEXPULSE_TANSU_BIN").unwrap_or_default(),
            )
            .output()
            .expect("run broker.sh");
        assert!(
            out.status.success(),
            "broker.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn start(&self) {
        self.run(&["start", self.storage, &self.port.to_string()]);
    }

    /// The shell command that restarts this broker on its storage, for `hexpulse up
    /// --broker-restart` (`scripts/broker.sh restart`, with this broker's cache and tansu).
    pub fn restart_command(&self) -> String {
        format!(
            "HEXPULSE_CACHE='{}' TANSU_BIN='{}' '{}' restart {} {}",
            self.cache.display(),
            std::env::var("HEXPULSE_TANSU_BIN").unwrap_or_default(),
            self.script,
            self.storage,
            self.port
        )
    }

    /// The broker's log (every start appends to it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.cache.join(format!("run/broker-{}/log", self.port)))
            .unwrap_or_default()
    }

    pub fn stop(&self) {
        self.run(&["stop", &self.port.to_string()]);
    }

    /// Kills the broker process (SIGKILL), as a crash or power loss of its host would: no graceful
    /// shutdown, open requests just lose their connection. Returns once the process is gone.
    pub fn kill(&self) {
        let pid = self.pid();
        self.signal("-KILL");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "broker {pid} still there 10 s after SIGKILL"
            );
            #[expect(
                clippy::disallowed_methods,
                reason = "tests' broker control is synchronous, called outside the runtime"
            )]
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // Clears the pid file.
        self.stop();
    }

    fn pid(&self) -> String {
        let pid_file = self.cache.join(format!("run/broker-{}/pid", self.port));
        let pid = std::fs::read_to_string(&pid_file).expect("broker pid file");
        pid.trim().to_string()
    }

    /// Freezes the broker process (SIGSTOP): its connections stay open but nothing answers, as with
    /// a hung broker or a network partition. [`OwnBroker::resume`] continues it with all its state.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a slow client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlowClient {
    /// The server closed the connection (or reset it) after this long, with these bytes answered.
    Closed {
        after: std::time::Duration,
        answer: String,
    },
    /// Still open when the client gave up.
    StillOpen,
}

/// A slowloris client: connects to `addr`, sends `head` (an incomplete request), then one byte of
/// `trickle` every `every` for up to `give_up`; returns when the server closes the connection.
pub async fn slow_client(
    addr: std::net::SocketAddr,
    head: &str,
    trickle: &str,
    every: std::time::Duration,
    give_up: std::time::Duration,
) -> SlowClient {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("send head");
    let mut answer = Vec::new();
    let mut bytes = trickle.bytes().cycle();
    let mut buf = [0u8; 4096];
    while started.elapsed() < give_up {
        match tokio::time::timeout(every, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return SlowClient::Closed {
                    after: started.elapsed(),
                    answer: String::from_utf8_lossy(&answer).into_owned(),
                };
            }
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {
                let b = [bytes.next().unwrap_or(b'x')];
                if s.write_all(&b).await.is_err() {
                    return SlowClient::Closed {
                        after: started.elapsed(),
                        answer: String::from_utf8_lossy(&answer).into_owned(),
                    };
                }
            }
        }
    }
    SlowClient::StillOpen
}

/// Peak resident memory of this process so far (VmHWM from /proc), bytes; 0 where unknown. Under
/// nextest every test is its own process, so a test can compare it before and after its load.
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The checkout's root, from the `CARGO_MANIFEST_DIR` that cargo and nextest set when they run a
/// test (the test's crate sits one level below the root). Read at run time, not with `env!`: the
/// shared build cache reuses a test binary across checkouts at other paths, and a compiled-in path
/// would read another checkout's files.
pub fn repo_root() -> std::path::PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    crate_dir.join("..")
}
