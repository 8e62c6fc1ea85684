//! Drives an ingest endpoint with signed batches from a [`Fleet`], at a rate or flat out.
//!
//! A generator thread builds and signs batches (CPU work stays off the async runtime) into a bounded
//! channel; `concurrency` senders POST them. Progress goes to stderr once a second; [`run`] returns a
//! [`Summary`] that the CLI prints as JSON.

use hexpulse_common::time::now_ms;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::adversary::{Adversarial, Ledger, Mixer, Outgoing};
use crate::door::{Door, Reply, Sender, Via};
use crate::fleet::{Fleet, KindMix};

/// The `[simulate]` config section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Ingest's base URL (HTTP and gRPC).
    pub target_url: String,
    /// The door: `http`, `grpc` (the stream at `target_url`) or `mqtt` (through `mqtt_broker`).
    #[serde(default)]
    pub via: Via,
    /// The MQTT broker (`host:port`) that the bridge reads, for `via = "mqtt"`.
    #[serde(default = "default_mqtt_broker")]
    pub mqtt_broker: String,
    pub devices: usize,
    pub seed: u64,
    /// Readings per second in total; 0 = unlimited.
    pub rate: f64,
    pub batch_size: usize,
    pub concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    pub count: u64,
    /// Build and sign every reading of a bounded run before its clock starts, so the simulator's
    /// signing does not compete with the pipeline for CPU (devices sign on their own hardware).
    /// Needs `count`, or `rate` and `duration`. Readings are timestamped when built, so they are up
    /// to the build time old when sent (far inside the allowed lateness).
    #[serde(default)]
    pub presign: bool,
    pub mix_heartbeat: f64,
    pub mix_sensor: f64,
    pub mix_road: f64,
    /// Readings and requests that must be refused (`[simulate.adversarial]`; none by default).
    #[serde(default)]
    pub adversarial: Adversarial,
    /// A pilot scenario (`[simulate.pilot]`; none by default).
    #[serde(default)]
    pub pilot: Option<PilotScenario>,
}

/// A pilot scenario: an area where the fleet has few devices, and new hotspots there that start
/// sending `start_after` into the run. `hexpulse up` creates the pilot too, with its start then.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PilotScenario {
    /// The pilot's name.
    pub name: String,
    /// West, south, east, north in degrees.
    pub area: [f64; 4],
    /// When the new hotspots start sending, from the start of the run.
    #[serde(with = "humantime_serde")]
    pub start_after: Duration,
    /// How many.
    pub new_hotspots: usize,
}

impl PilotScenario {
    /// The area's box, checked: west < east, south < north, inside the globe.
    pub fn check(&self) -> Result<(), String> {
        let [w, s, e, n] = self.area;
        let ok = (-180.0..=180.0).contains(&w)
            && (-180.0..=180.0).contains(&e)
            && (-90.0..=90.0).contains(&s)
            && (-90.0..=90.0).contains(&n)
            && w < e
            && s < n;
        if ok {
            Ok(())
        } else {
            Err(format!(
                "[simulate.pilot] area {:?}: west, south, east, north in degrees, west < east and \
                 south < north",
                self.area
            ))
        }
    }

    /// The area as a GeoJSON polygon.
    pub fn polygon(&self) -> serde_json::Value {
        let [w, s, e, n] = self.area;
        serde_json::json!({"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]})
    }
}

fn default_mqtt_broker() -> String {
    "127.0.0.1:1883".into()
}

impl SimConfig {
    pub fn mix(&self) -> KindMix {
        KindMix {
            heartbeat: self.mix_heartbeat,
            sensor: self.mix_sensor,
            road: self.mix_road,
        }
    }

    /// The fleet of a run that starts at `run_start_ms`, with the pilot scenario's hotspots.
    pub fn fleet(&self, run_start_ms: i64) -> Fleet {
        let mut fleet = Fleet::new(self.devices, self.seed, self.mix());
        if let Some(p) = &self.pilot {
            fleet.add_dormant_hotspots(
                p.new_hotspots,
                p.area,
                self.pilot_start_ms(run_start_ms).unwrap_or(i64::MAX),
            );
        }
        fleet
    }

    /// When the pilot scenario's hotspots start sending, in a run that starts at `run_start_ms`.
    pub fn pilot_start_ms(&self, run_start_ms: i64) -> Option<i64> {
        self.pilot
            .as_ref()
            .map(|p| run_start_ms + p.start_after.as_millis() as i64)
    }

    /// The fleet with the adversarial mix on top; `max_body_bytes` is the target ingest's limit.
    pub fn mixer(&self, max_body_bytes: usize, run_start_ms: i64) -> Mixer {
        Mixer::new(
            self.fleet(run_start_ms),
            self.adversarial.clone(),
            self.seed,
            max_body_bytes,
        )
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub rejected_by_code: BTreeMap<String, u64>,
    pub requests_by_status: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub elapsed_s: f64,
    /// Seconds spent building and signing every reading before the clock started (`presign`).
    #[serde(default)]
    pub presign_s: f64,
    pub accepted_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    transport_errors: AtomicU64,
    detail: Mutex<Detail>,
}

#[derive(Default)]
struct Detail {
    latencies_us: Vec<u32>,
    by_code: BTreeMap<String, u64>,
    by_status: BTreeMap<u16, u64>,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// The line the simulator prints (with progress on) when its clock starts and the first reading is
/// about to be sent.
pub const SENDING_MARK: &str = "[simulate] sending";

/// Runs until the duration or count is reached, or `stop` is cancelled. With a `ledger`, every
/// reading sent and ingest's answer for it are recorded there (for [`crate::account`]). Fails
/// only when the door cannot be opened (an MQTT broker that does not answer).
pub async fn run(
    cfg: &SimConfig,
    mut mixer: Mixer,
    stop: CancellationToken,
    progress: bool,
    ledger: Option<Arc<Mutex<Ledger>>>,
) -> anyhow::Result<Summary> {
    let door = Door::open(
        cfg.via,
        &cfg.target_url,
        &cfg.mqtt_broker,
        cfg.concurrency.max(1),
    )
    .await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Outgoing>(cfg.concurrency.max(1) * 2);
    let gen_ledger = ledger.clone();
    let batch_size = cfg.batch_size.max(1);
    let mut count = cfg.count;
    let gen_stop = stop.clone();
    let mut build = move |n: u64| match &gen_ledger {
        Some(l) => mixer.batch(n, now_ms(), Some(&mut l.lock().expect("lock").sent)),
        None => mixer.batch(n, now_ms(), None),
    };
    let mut presigned = None;
    let mut presign_s = 0.0;
    if cfg.presign {
        if count == 0 && cfg.rate > 0.0 && !cfg.duration.is_zero() {
            count = (cfg.rate * cfg.duration.as_secs_f64()).ceil() as u64;
        }
        if count == 0 {
            eprintln!(
                "[simulate] --presign needs a count, or a rate and a duration: signing as it goes"
            );
        } else {
            let t = Instant::now();
            // Minutes of CPU work: off the async workers (the runtime is multi-threaded).
            #[expect(
                clippy::disallowed_methods,
                reason = "before any traffic starts; the worker's other tasks (the freshness \
                          probe) move to another worker, and the work borrows the run's state, \
                          which spawn_blocking cannot"
            )]
            let batches = tokio::task::block_in_place(|| {
                let mut batches = Vec::new();
                let mut built = 0u64;
                let mut shown = Instant::now();
                while built < count && !stop.is_cancelled() {
                    let out = build((count - built).min(batch_size as u64));
                    built += out.n;
                    batches.push(out);
                    if progress && shown.elapsed() >= Duration::from_secs(5) {
                        eprintln!("[simulate] presigned {built} of {count} readings");
                        shown = Instant::now();
                    }
                }
                batches
            });
            let built: u64 = batches.iter().map(|b| b.n).sum();
            presign_s = t.elapsed().as_secs_f64();
            if progress {
                eprintln!("[simulate] presigned {built} readings in {presign_s:.1} s");
            }
            presigned = Some(batches);
        }
    }
    let unsent_ledger = ledger.clone();
    let generator = std::thread::Builder::new()
        .name("sim-generator".into())
        .spawn(move || {
            if let Some(batches) = presigned {
                let mut batches = batches.into_iter();
                for out in batches.by_ref() {
                    if let Err(e) = tx.blocking_send(out) {
                        // The run ended first: these readings were built but never sent.
                        if let Some(l) = &unsent_ledger {
                            let mut l = l.lock().expect("lock");
                            for out in std::iter::once(e.0).chain(batches.by_ref()) {
                                if let Some(first) = out.first {
                                    l.unsent(first, out.n as usize);
                                }
                            }
                        }
                        break;
                    }
                }
                return;
            }
            let mut produced = 0u64;
            while !gen_stop.is_cancelled() && (count == 0 || produced < count) {
                let n = if count == 0 {
                    batch_size as u64
                } else {
                    (count - produced).min(batch_size as u64)
                };
                let out = build(n);
                // A malformed request carries no readings; the count is of readings.
                produced += out.n;
                if tx.blocking_send(out).is_err() {
                    break;
                }
            }
        })
        .expect("spawn generator");
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    if progress {
        // `hexpulse bench e2e` starts its CPU window at this line.
        eprintln!("{SENDING_MARK}");
    }
    let deadline = (!cfg.duration.is_zero()).then(|| tokio::time::Instant::now() + cfg.duration);
    // Pace by batches: one batch every batch_size / rate seconds, shared by all senders.
    let pace = (cfg.rate > 0.0).then(|| Duration::from_secs_f64(batch_size as f64 / cfg.rate));
    let ticker = Arc::new(tokio::sync::Mutex::new(pace.map(|p| {
        let mut i = tokio::time::interval(p);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    })));

    let mut senders = Vec::new();
    for _ in 0..cfg.concurrency.max(1) {
        let (rx, counters, mut sender, stop, ticker, ledger) = (
            rx.clone(),
            counters.clone(),
            door.sender(),
            stop.clone(),
            ticker.clone(),
            ledger.clone(),
        );
        senders.push(tokio::spawn(async move {
            loop {
                if let Some(t) = ticker.lock().await.as_mut() {
                    tokio::select! { _ = stop.cancelled() => return, _ = t.tick() => {} }
                }
                let next = tokio::select! { _ = stop.cancelled() => return, b = async { rx.lock().await.recv().await } => b };
                let Some(out) = next else { return };
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    // Built but never sent: its readings leave the ledger's accounting.
                    if let (Some(l), Some(first)) = (&ledger, out.first) {
                        l.lock().expect("lock").unsent(first, out.n as usize);
                    }
                    return;
                }
                send_one(&mut sender, out, &counters, ledger.as_deref()).await;
            }
        }));
    }
    let progress_task = progress.then(|| {
        let counters = counters.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut last = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! { _ = stop.cancelled() => return, _ = tick.tick() => {} }
                let acc = counters.accepted.load(Ordering::Relaxed);
                let (p50, p99) = {
                    let mut d = counters.detail.lock().expect("lock");
                    let mut l = std::mem::take(&mut d.latencies_us);
                    l.sort_unstable();
                    let r = (percentile(&l, 0.5), percentile(&l, 0.99));
                    d.latencies_us = l;
                    r
                };
                eprintln!(
                    "[simulate] {:>6.0}s sent {} accepted {} ({}/s) rejected {} errors {} latency p50 {:.1} ms p99 {:.1} ms",
                    start.elapsed().as_secs_f64(),
                    counters.sent.load(Ordering::Relaxed),
                    acc,
                    acc - last,
                    counters.rejected.load(Ordering::Relaxed),
                    counters.transport_errors.load(Ordering::Relaxed),
                    p50,
                    p99
                );
                last = acc;
            }
        })
    });
    for s in senders {
        let _ = s.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(p) = progress_task {
        p.abort();
    }
    // Unblock and join the generator.
    drop(rx);
    let _ = tokio::task::spawn_blocking(move || generator.join()).await;

    let mut d = std::mem::take(&mut *counters.detail.lock().expect("lock"));
    d.latencies_us.sort_unstable();
    let accepted = counters.accepted.load(Ordering::Relaxed);
    Ok(Summary {
        sent: counters.sent.load(Ordering::Relaxed),
        accepted,
        rejected: counters.rejected.load(Ordering::Relaxed),
        rejected_by_code: d.by_code,
        requests_by_status: d.by_status,
        transport_errors: counters.transport_errors.load(Ordering::Relaxed),
        elapsed_s: elapsed,
        presign_s,
        accepted_per_s: accepted as f64 / elapsed.max(1e-9),
        latency_p50_ms: percentile(&d.latencies_us, 0.5),
        latency_p99_ms: percentile(&d.latencies_us, 0.99),
    })
}

async fn send_one(
    sender: &mut Sender,
    out: Outgoing,
    c: &Counters,
    ledger: Option<&Mutex<Ledger>>,
) {
    let t = Instant::now();
    let n = out.n;
    c.sent.fetch_add(n, Ordering::Relaxed);
    let Reply { status, body: json } = sender.send(&out).await;
    let record = |status: u16, json: &serde_json::Value| {
        if let Some(l) = ledger {
            let mut l = l.lock().expect("lock");
            *l.requests
                .entry((out.request_class.as_str().to_string(), status))
                .or_default() += 1;
            if let Some(first) = out.first {
                l.answer(first, n as usize, status, json);
            }
        }
    };
    if status == 0 {
        c.transport_errors.fetch_add(1, Ordering::Relaxed);
        record(0, &json);
        return;
    }
    record(status, &json);
    let latency = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
    let accepted = json["accepted"].as_u64().unwrap_or(0);
    c.accepted.fetch_add(accepted, Ordering::Relaxed);
    c.rejected.fetch_add(n - accepted.min(n), Ordering::Relaxed);
    let mut d = c.detail.lock().expect("lock");
    // Bounded memory on endless demo runs: keep the most recent samples.
    if d.latencies_us.len() >= 200_000 {
        d.latencies_us.drain(..100_000);
    }
    d.latencies_us.push(latency);
    *d.by_status.entry(status).or_default() += 1;
    if status == 200 {
        for r in json["rejected"].as_array().into_iter().flatten() {
            *d.by_code
                .entry(r["code"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
    } else {
        let code = json["error"]["code"]
            .as_str()
            .unwrap_or("http_error")
            .to_string();
        *d.by_code.entry(code).or_default() += n - accepted.min(n);
    }
}
