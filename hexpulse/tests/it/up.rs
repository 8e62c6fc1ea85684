//! `hexpulse up` as a child process for end-to-end tests: the demo config plus the test's own layer,
//! a unique topic, a temporary lake and registry, listeners on free ports; the URLs it prints.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hexpulse_testkit::testenv;

pub struct Up {
    child: std::process::Child,
    pub dir: tempfile::TempDir,
    pub topic: String,
    /// Ingest and query service base URLs (no trailing slash).
    pub ingest: String,
    pub query: String,
    /// The epoch current at start.
    pub epoch: i64,
    /// The admin token `up` printed for this run (when the config names none).
    pub admin_token: Option<String>,
    /// The config files, in order (for other `hexpulse` commands against the same setup).
    pub config: String,
}

/// The bearer token of the `admin` role in [`accounting_layer`] (accounting reads the private
/// `rejected` table).
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A config layer for accounting runs: `ingest` (lines of the `[ingest]` section) and a query token
/// of the `admin` role, [`ADMIN_TOKEN`].
pub fn accounting_layer(ingest: &str) -> String {
    use sha2::{Digest, Sha256};
    format!(
        "[ingest]\n{ingest}\n\n[query.auth]\ntokens = [{{ name = \"accounting\", role = \"admin\", sha256 = \"{}\" }}]\n",
        hex::encode(Sha256::digest(ADMIN_TOKEN.as_bytes()))
    )
}

/// Prints a finished `hexpulse simulate` (its JSON summary and the end of its progress) and returns
/// the summary.
pub fn summary(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
    // A panic's message sits above its backtrace, out of the tail's reach.
    let panics: Vec<&str> = stderr
        .lines()
        .skip_while(|l| !l.contains("panicked"))
        .take(3)
        .collect();
    eprintln!(
        "{stdout}\n(stderr, last lines reversed)\n{}\n{}",
        tail.join("\n"),
        panics.join("\n")
    );
    let start = stdout.find('{').expect("simulate printed a JSON summary");
    serde_json::from_str(&stdout[start..]).expect("JSON summary")
}

/// The summary of a finished accounting run, after checking that the accounting found no mismatch
/// and the simulator exited successfully.
pub fn accounted(out: &std::process::Output) -> serde_json::Value {
    let summary = summary(out);
    let acct = &summary["accounting"];
    assert_eq!(
        acct["mismatch_total"], 0,
        "mismatches: {}",
        acct["mismatches"]
    );
    assert!(out.status.success(), "simulate failed");
    summary
}

/// The `hexpulse` binary these tests run: `HEXPULSE_TEST_BIN`, or the one cargo built. (A copy
/// keeps a long soak on one build while the workspace is rebuilt: the soak restarts processors.)
pub fn bin() -> String {
    std::env::var("HEXPULSE_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hexpulse").into())
}

/// The `RUST_LOG` of the processes these tests start: `HEXPULSE_TEST_LOG`, or warnings only.
/// (`HEXPULSE_TEST_LOG=info make soak` shows the processors' rebalances and re-reads.)
pub fn log_filter() -> String {
    std::env::var("HEXPULSE_TEST_LOG").unwrap_or_else(|_| "warn".into())
}

pub fn root() -> String {
    hexpulse_testkit::testenv::repo_root().display().to_string()
}

impl Up {
    /// Starts `hexpulse up ARGS` with config/demo.toml and, when given, `layer` (TOML) over it.
    pub fn start(test: &str, brokers: &str, args: &[&str], layer: Option<&str>) -> Up {
        let dir = tempfile::tempdir().unwrap();
        let mut config = format!("{}/config/demo.toml", root());
        if let Some(text) = layer {
            let path = dir.path().join("test.toml");
            std::fs::write(&path, text).unwrap();
            config = format!("{config},{}", path.display());
        }
        let topic = testenv::unique_topic(test);
        Up::spawn(dir, topic, config, brokers, args)
    }

    /// Stops `up` as Ctrl-C does (SIGINT, then waits for it to exit) and starts it again with the
    /// same config, topic, registry and lake, as a user running `make up` again would.
    pub fn restart(mut self, brokers: &str, args: &[&str]) -> Up {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        let status = self.child.wait().expect("up exits");
        assert!(status.success(), "`hexpulse up` after Ctrl-C: {status}");
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Up::spawn(dir, self.topic.clone(), self.config.clone(), brokers, args)
    }

    fn spawn(
        dir: tempfile::TempDir,
        topic: String,
        config: String,
        brokers: &str,
        args: &[&str],
    ) -> Up {
        let mut child = Command::new(bin())
            .arg("up")
            .args(args)
            .envs(Self::env_for(&config, brokers, &topic, dir.path()))
            .env("HEXPULSE__INGEST__LISTEN", "127.0.0.1:0")
            .env("HEXPULSE__PROCESS__LISTEN", "127.0.0.1:0")
            .env("HEXPULSE__QUERY__LISTEN", "127.0.0.1:0")
            .env("HEXPULSE__QUERY__PG_LISTEN", "127.0.0.1:0")
            .env("HEXPULSE__QUERY__FLIGHT_LISTEN", "127.0.0.1:0")
            .env("HEXPULSE__SIMULATE__DEVICES", "300")
            .env("RUST_LOG", log_filter())
            .stdout(Stdio::piped())
            .spawn()
            .expect("hexpulse up");
        let stdout = child.stdout.take().unwrap();
        let (mut ingest, mut query, mut epoch, mut admin_token) = (None, None, None, None);
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let t = line.trim_start();
            if let Some(rest) = t.strip_prefix("ingest   POST ") {
                ingest = rest
                    .split_whitespace()
                    .next()
                    .map(|u| u.trim_end_matches("/v1/readings").to_string());
            }
            if let Some(rest) = t.strip_prefix("map") {
                query = rest
                    .split_whitespace()
                    .next()
                    .map(|u| u.trim_end_matches('/').to_string());
            }
            if let Some((_, rest)) = line.split_once("Authorization: Bearer ") {
                admin_token = rest.split(')').next().map(str::to_string);
            }
            if let Some((_, rest)) = line.split_once("(now epoch ") {
                epoch = rest.split(')').next().and_then(|n| n.parse::<i64>().ok());
            }
            if ingest.is_some() && query.is_some() && epoch.is_some() {
                break;
            }
        }
        // Keep draining `up`'s stdout, or it fails printing its summary at shutdown.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Up {
            child,
            dir,
            topic,
            ingest: ingest.expect("`hexpulse up` printed the ingest URL"),
            query: query.expect("`hexpulse up` printed the map (query) URL"),
            epoch: epoch.expect("`hexpulse up` printed the current epoch"),
            admin_token,
            config,
        }
    }

    fn env_for(
        config: &str,
        brokers: &str,
        topic: &str,
        dir: &Path,
    ) -> Vec<(&'static str, String)> {
        vec![
            ("HEXPULSE_CONFIG", config.to_string()),
            ("HEXPULSE__KAFKA__BROKERS", brokers.to_string()),
            ("HEXPULSE__KAFKA__RAW_TOPIC", topic.to_string()),
            ("HEXPULSE__KAFKA__PARTITIONS", "2".to_string()),
            (
                "HEXPULSE__REGISTRY__PATH",
                dir.join("devices.json").display().to_string(),
            ),
            (
                "HEXPULSE__PROCESS__LAKE_URL",
                dir.join("lake").display().to_string(),
            ),
            ("HEXPULSE__PROCESS__GROUP_ID", format!("{topic}-g")),
        ]
    }

    /// A `hexpulse` command with the same config, topic, registry and lake.
    pub fn command(&self, brokers: &str) -> Command {
        let mut c = Command::new(bin());
        c.envs(Self::env_for(
            &self.config,
            brokers,
            &self.topic,
            self.dir.path(),
        ))
        .env("RUST_LOG", log_filter());
        c
    }

    /// `hexpulse simulate --register --account` against this setup, with `extra` arguments, a random
    /// seed and [`ADMIN_TOKEN`] for the query service.
    pub fn simulate(&self, brokers: &str, extra: &[&str]) -> Command {
        let seed = rand::random::<u32>().to_string();
        eprintln!("simulate with seed {seed}");
        let mut c = self.command(brokers);
        c.args(["simulate", "--register", "--account", "--target-url"])
            .arg(&self.ingest)
            .args(["--query-url", &self.query])
            .args(extra)
            .env("HEXPULSE__SIMULATE__SEED", seed)
            .env("HEXPULSE_QUERY_TOKEN", ADMIN_TOKEN);
        c
    }

    /// `hexpulse seal --epoch EPOCH --force` against this setup (an ended epoch, sealed before its
    /// lateness has passed, and published).
    pub fn seal_forced(&self, brokers: &str, epoch: i64) {
        let out = self
            .command(brokers)
            .args(["seal", "--epoch", &epoch.to_string(), "--force"])
            .output()
            .expect("hexpulse seal");
        assert!(
            out.status.success(),
            "seal {epoch}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The `hexpulse up` process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn lake(&self) -> PathBuf {
        self.dir.path().join("lake")
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
    }
}
