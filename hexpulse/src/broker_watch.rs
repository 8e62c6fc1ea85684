//! `hexpulse up --broker-restart CMD`: a watch on the local broker, for the one-machine default.
//!
//! tansu 0.6 can wedge: after a produce with a producer epoch it did not hand out (an outside
//! idempotent producer whose records expire, for one) its sqlite engine's storage task panics, and
//! from then on every request is answered `Storage(UnableToSend)`, Metadata included, until the
//! process is restarted (ARCHITECTURE.md, tansu behaviours). Nothing of ours can prevent an outside
//! client from doing that. So `up` watches: every `every` it produces one small record to
//! [`PROBE_TOPIC`] (not idempotent, acks=all) and waits for the broker's answer. When no probe has
//! been acknowledged for `stall`, it runs the restart command (`make up`: `scripts/broker.sh restart
//! sqlite PORT`), which stops the broker (SIGKILL when it does not stop within seconds) and starts it
//! on the same durable storage. Ingest and the processors reconnect on their own; what the broker
//! acknowledged before is in its storage (the soak and `faults::broker_wedged_…` check it).

use std::time::{Duration, Instant};

use hexpulse_common::kafka::KafkaConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

/// The topic the probes go to: one tiny record (the time) per probe.
pub const PROBE_TOPIC: &str = "hexpulse-broker-probe";

/// Restarts of the broker by the watch.
pub const RESTARTS: &str = "hexpulse_up_broker_restarts_total";
/// 1 while the last probe was acknowledged, else 0.
pub const PROBE_OK: &str = "hexpulse_up_broker_probe_ok";

#[derive(Debug, Clone)]
pub struct Watch {
    /// A shell command (`sh -c`) that restarts the broker on its durable storage.
    pub restart: String,
    /// How long without an acknowledged probe counts as wedged.
    pub stall: Duration,
    /// Time between probes; each probe waits at most `stall / 2` for its answer.
    pub every: Duration,
}

impl Watch {
    /// Probes until `stop`, restarting the broker whenever it stalls. Errors of the probe producer
    /// are not fatal: a broker that is down at start is what the watch is for.
    pub async fn run(self, kafka: KafkaConfig, stop: CancellationToken) {
        let producer = match probe_producer(&kafka, self.stall / 2) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "broker watch: no probe producer; the broker is not watched");
                return;
            }
        };
        if let Err(e) = kafka.ensure_topics(&[PROBE_TOPIC]).await {
            tracing::warn!(error = %e, "broker watch: the probe topic could not be created yet");
        }
        tracing::info!(stall = ?self.stall, restart = %self.restart, "broker watch started");
        let mut last_ok = Instant::now();
        let mut ok = true;
        loop {
            let now = hexpulse_common::time::now_ms().to_be_bytes();
            let probe = FutureRecord::<(), [u8]>::to(PROBE_TOPIC).payload(&now[..]);
            let acked = tokio::select! {
                () = stop.cancelled() => return,
                r = producer.send(probe, self.stall / 2) => r.is_ok(),
            };
            if acked {
                last_ok = Instant::now();
                if !ok {
                    tracing::info!("broker watch: the broker acknowledges produce requests again");
                }
            } else if ok {
                tracing::warn!("broker watch: a probe was not acknowledged");
            }
            ok = acked;
            metrics::gauge!(PROBE_OK).set(if acked { 1.0 } else { 0.0 });
            if last_ok.elapsed() >= self.stall {
                tracing::error!(
                    stall = ?self.stall,
                    restart = %self.restart,
                    "broker watch: no produce request acknowledged for the stall time; restarting the broker"
                );
                metrics::counter!(RESTARTS).increment(1);
                match restart(&self.restart).await {
                    Ok(out) => tracing::info!(output = %out, "broker watch: broker restarted"),
                    Err(e) => {
                        tracing::error!(error = %e, "broker watch: the restart command failed")
                    }
                }
                // The broker gets a whole stall time to answer again before the next restart.
                last_ok = Instant::now();
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.every) => {}
            }
        }
    }
}

fn probe_producer(
    kafka: &KafkaConfig,
    timeout: Duration,
) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    let mut c = kafka.client_config();
    // Not idempotent: an idempotent producer bumps its epoch after a failed delivery, and such a
    // bump is what wedges tansu (module comment).
    c.set("client.id", "hexpulse-broker-watch")
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .set("retries", "0")
        .set("message.timeout.ms", timeout.as_millis().to_string())
        .set("request.timeout.ms", timeout.as_millis().to_string());
    c.create()
}

/// Runs `cmd` with `sh -c`, killed after two minutes; its combined output on success.
async fn restart(cmd: &str) -> anyhow::Result<String> {
    let cmd = cmd.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        use std::process::{Command, Stdio};
        // A file rather than a pipe: the broker the command starts must not hold our pipe open.
        let log = std::env::temp_dir().join(format!(
            "hexpulse-broker-restart-{}.log",
            std::process::id()
        ));
        let file = std::fs::File::create(&log)?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("`{cmd}` did not finish within 120 s");
            }
            #[expect(
                clippy::disallowed_methods,
                reason = "on a blocking thread of its own (spawn_blocking), polling the child"
            )]
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut text = String::new();
        std::fs::File::open(&log)?.read_to_string(&mut text)?;
        let _ = std::fs::remove_file(&log);
        if !status.success() {
            anyhow::bail!("`{cmd}` exited with {status}: {}", text.trim());
        }
        Ok(text.trim().to_string())
    })
    .await?
}
