//! Freshness: the time from ingest's acceptance of a reading to its visibility in the query service.
//!
//! A probe device (registered like the fleet, its key derived from the seed) sends one heartbeat
//! per request every `interval`; the moment the answer arrives is its acceptance. Two pollers ask
//! the query service every `poll`, each on its own:
//! - SQL: the probe's highest sequence number in `heartbeat`; the first poll that sees sequence `s`
//!   makes every probe reading up to `s` visible;
//! - `/v1/coverage`: the heartbeats counted in the probe's hexes at the finest resolution since the
//!   run began. The probe sits far from every city of the fleet, so they are its own, and `n` of
//!   them make its first `n` accepted readings visible (one device: one partition, in order).
//!
//! Resolution: `poll`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use hexpulse_common::registry::Device;
use hexpulse_schemas::wire::{Heartbeat, Kind, KindName, Location, Reading, ReadingBatch};
use prost::Message;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::account::LakeReader;
use crate::adversary::{Answer, Ledger, Sent};
use crate::fleet::{device_key, sign_reading};

/// In the fields south-west of Berlin, 90 km from the fleet's nearest city centre (the fleet's
/// devices stay within 40 km of theirs), so that the probe's hexes are its own.
const HOME: (f64, f64) = (52.05, 12.20);

/// The probe device.
pub struct Probe {
    key: SigningKey,
}

/// How often the probe sends and polls, and how long it waits for its last readings at the end.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub interval: Duration,
    pub poll: Duration,
    pub tail: Duration,
}

impl Default for Timing {
    /// One reading a second (far below the rules' rate limit), polls four times a second.
    fn default() -> Timing {
        Timing {
            interval: Duration::from_secs(1),
            poll: Duration::from_millis(250),
            tail: Duration::from_secs(60),
        }
    }
}

/// Freshness figures of a run: through SQL, and through `/v1/coverage`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Freshness {
    #[serde(flatten)]
    pub sql: Figures,
    pub coverage: Figures,
}

/// Freshness through one door of the query service.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Probe readings accepted but never seen by the end of the run.
    pub unseen: usize,
    /// How long the query service took to answer a poll (each poll's whole round trip): the part
    /// of freshness that is the query's own latency rather than the pipeline's.
    pub poll_p50_ms: f64,
    pub poll_p99_ms: f64,
    pub poll_max_ms: f64,
    /// The slowest readings, slowest first, at most five: `[accepted, freshness]`, accepted in
    /// seconds after the probe began (to place them in the run: its start, the units' commits,
    /// its end), freshness in ms.
    pub slowest: Vec<[f64; 2]>,
}

impl Probe {
    pub fn new(seed: u64) -> Probe {
        Probe {
            key: device_key(seed ^ 0x000f_2e54_0000_0000, 0),
        }
    }

    pub fn key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// Its registry entry.
    pub fn device(&self) -> Device {
        Device {
            public_key: self.key_hex(),
            kind: KindName::Heartbeat,
            lat: HOME.0,
            lng: HOME.1,
            owner: "freshness-probe".into(),
        }
    }

    /// Sends probe readings and polls the query service until `stop`, then waits up to `tail` for
    /// the last ones to show. Probe readings go into `ledger` too, so accounting covers them.
    pub async fn run(
        &self,
        ingest_url: &str,
        lake: &LakeReader,
        timing: Timing,
        stop: CancellationToken,
        ledger: Option<Arc<Mutex<Ledger>>>,
    ) -> Freshness {
        let accepted: Arc<Mutex<BTreeMap<u64, Instant>>> = Arc::default();
        let url = format!("{}/v1/readings", ingest_url.trim_end_matches('/'));
        let client = reqwest::Client::new();
        let sender = {
            let (accepted, key, stop) = (accepted.clone(), self.key.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seq = hexpulse_common::time::now_ms() as u64;
                let mut tick = tokio::time::interval(timing.interval);
                loop {
                    tokio::select! { () = stop.cancelled() => return, _ = tick.tick() => {} }
                    seq += 1;
                    let now = hexpulse_common::time::now_ms();
                    let r = Reading {
                        schema_version: hexpulse_schemas::wire::SCHEMA_VERSION,
                        device_time_ms: now,
                        seq,
                        location: Some(Location {
                            lat: HOME.0,
                            lng: HOME.1,
                            accuracy_m: 3.0,
                        }),
                        kind: Some(Kind::Heartbeat(Heartbeat {
                            radio: 1,
                            signal_dbm: -60.0,
                            speed_test: None,
                        })),
                    };
                    let s = sign_reading(&key, &r);
                    // The ledger's lock is held for whole batches while the simulator presigns:
                    // waited for on an async worker, it stalled this runtime's other tasks (the
                    // pollers, whose stalls counted as seconds of freshness), so it is taken on
                    // the blocking pool.
                    let first = match &ledger {
                        Some(l) => {
                            let (l, key) = (l.clone(), hex::encode(&s.public_key));
                            tokio::task::spawn_blocking(move || {
                                let mut l = l.lock().unwrap_or_else(|e| e.into_inner());
                                l.sent.push(Sent {
                                    key,
                                    seq,
                                    kind: KindName::Heartbeat,
                                    class: crate::adversary::Class::Valid,
                                    rows: 1,
                                    answer: Answer::Pending,
                                });
                                l.sent.len() - 1
                            })
                            .await
                            .ok()
                        }
                        None => None,
                    };
                    let body = ReadingBatch { readings: vec![s] }.encode_to_vec();
                    let resp = client
                        .post(&url)
                        .header("content-type", "application/x-protobuf")
                        .body(body)
                        .send()
                        .await;
                    let (status, json) = match resp {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            (status, r.json().await.unwrap_or_default())
                        }
                        Err(_) => (0, serde_json::Value::Null),
                    };
                    // Accepted when the answer arrived, and known to the pollers at once: the
                    // ledger may wait for the presigning's lock, and a reading visible before the
                    // pollers know it was accepted taught the coverage poll nothing (below).
                    if status == 200 && json["accepted"].as_u64() == Some(1) {
                        accepted
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(seq, Instant::now());
                    }
                    if let (Some(l), Some(first)) = (&ledger, first) {
                        let l = l.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            l.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .answer(first, 1, status, &json)
                        })
                        .await;
                    }
                }
            })
        };
        let key = self.key_hex();
        let sent_from = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        // Both pollers stop together: at `tail` after `stop`, or once neither waits for a reading.
        let sql_poll = poll_until_seen(&accepted, timing, &stop, Sql::new(lake, key));
        let coverage_poll = poll_until_seen(
            &accepted,
            timing,
            &stop,
            CoverageCount {
                lake,
                from: sent_from,
            },
        );
        let (sql, coverage) = tokio::join!(sql_poll, coverage_poll);
        let _ = sender.await;
        Freshness { sql, coverage }
    }
}

/// One way of asking the query service how many of the probe's readings it shows.
trait Visible {
    /// The highest probe sequence number visible (with `accepted`, the probe's accepted readings
    /// by sequence number), or `None` when this poll learnt nothing.
    async fn visible_up_to(&mut self, accepted: &BTreeMap<u64, Instant>) -> Option<u64>;
}

/// Polls `door` every `timing.poll` until `stop` and then the tail: each reading's freshness is
/// the time from its acceptance to the first poll that shows it.
async fn poll_until_seen(
    accepted: &Mutex<BTreeMap<u64, Instant>>,
    timing: Timing,
    stop: &CancellationToken,
    mut door: impl Visible,
) -> Figures {
    let mut seen_up_to = 0u64;
    let began = Instant::now();
    let mut samples: Vec<f64> = Vec::new();
    let mut slowest: Vec<[f64; 2]> = Vec::new();
    let mut polls: Vec<f64> = Vec::new();
    let mut tail_deadline: Option<Instant> = None;
    loop {
        if stop.is_cancelled() && tail_deadline.is_none() {
            tail_deadline = Some(Instant::now() + timing.tail);
        }
        let snapshot = accepted.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let asked = Instant::now();
        let visible = door.visible_up_to(&snapshot).await;
        let now = Instant::now();
        polls.push(now.duration_since(asked).as_secs_f64() * 1000.0);
        if let Some(s) = visible
            && s > seen_up_to
        {
            for (_, at) in snapshot.range(seen_up_to + 1..=s) {
                let ms = now.duration_since(*at).as_secs_f64() * 1000.0;
                samples.push(ms);
                slowest.push([at.duration_since(began).as_secs_f64(), ms]);
                slowest.sort_by(|a, b| b[1].total_cmp(&a[1]));
                slowest.truncate(5);
            }
            seen_up_to = s;
        }
        let pending = accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .range(seen_up_to + 1..)
            .count();
        if tail_deadline.is_some_and(|d| Instant::now() >= d || pending == 0) {
            let polls = Percentiles::of(polls);
            let f = Percentiles::of(samples);
            return Figures {
                samples: f.n,
                p50_ms: f.p50,
                p99_ms: f.p99,
                max_ms: f.max,
                unseen: pending,
                poll_p50_ms: polls.p50,
                poll_p99_ms: polls.p99,
                poll_max_ms: polls.max,
                slowest,
            };
        }
        tokio::time::sleep(timing.poll).await;
    }
}

/// Through SQL: the probe's highest sequence number in `heartbeat`.
struct Sql<'a> {
    lake: &'a LakeReader,
    key: String,
    /// Looked up once; empty (unfiltered polls) when no H3 column is found.
    cell_filter: Option<String>,
}

impl<'a> Sql<'a> {
    fn new(lake: &'a LakeReader, key: String) -> Sql<'a> {
        Sql {
            lake,
            key,
            cell_filter: None,
        }
    }
}

/// Only the last two minutes: the event_time statistics prune every older file, so a poll stays
/// cheap however large the lake grows.
fn two_minutes_ago() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now() - Duration::from_secs(120))
        .to_string()
}

impl Visible for Sql<'_> {
    async fn visible_up_to(&mut self, _: &BTreeMap<u64, Instant>) -> Option<u64> {
        // Once the probe's cell is known (from its first visible row), the filter on it lets the
        // page index skip all but a page or so of each file (files are sorted by their coarsest
        // cell), instead of decoding every device key.
        let sql = format!(
            "SELECT max(seq) AS s FROM heartbeat WHERE device_key = '{}' AND event_time >= '{}'{}",
            self.key,
            two_minutes_ago(),
            self.cell_filter.as_deref().unwrap_or("")
        );
        let s = self.lake.sql(&sql).await.ok()?.first()?["s"].as_u64()?;
        if self.cell_filter.is_none() {
            self.cell_filter = Some(
                probe_cell_filter(self.lake, &self.key, &two_minutes_ago())
                    .await
                    .unwrap_or_default(),
            );
        }
        Some(s)
    }
}

/// Through `/v1/coverage`: the heartbeats of the hexes around the probe since the run began.
struct CoverageCount<'a> {
    lake: &'a LakeReader,
    from: String,
}

impl Visible for CoverageCount<'_> {
    async fn visible_up_to(&mut self, accepted: &BTreeMap<u64, Instant>) -> Option<u64> {
        let (lat, lng) = HOME;
        let d = 0.0005;
        let url = format!(
            "{}/v1/coverage?bbox={},{},{},{}&zoom=24&from={}",
            self.lake.url,
            lng - d,
            lat - d,
            lng + d,
            lat + d,
            self.from
        );
        let mut req = self.lake.client.get(url);
        if let Some(t) = &self.lake.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body: serde_json::Value = resp.json().await.ok()?;
        let n: u64 = body["features"]
            .as_array()?
            .iter()
            .filter_map(|f| f["properties"]["heartbeats"].as_u64())
            .sum();
        visible_of_count(n, accepted)
    }
}

/// The highest probe sequence number that `n` visible heartbeats show: the n-th accepted reading
/// by sequence number (one device, one partition, in order; n = 0: none). With more heartbeats
/// than accepted readings known to the poll (a reading visible before its answer reached the
/// probe), every one known is visible; answering nothing there held coverage's freshness back by
/// seconds while the simulator presigned.
fn visible_of_count(n: u64, accepted: &BTreeMap<u64, Instant>) -> Option<u64> {
    let n = usize::try_from(n).ok()?.checked_sub(1)?;
    accepted
        .keys()
        .nth(n)
        .or_else(|| accepted.keys().next_back())
        .copied()
}

/// The cell filter from one of the probe's rows ([`cell_filter_of`]), or `None` when there is no row.
async fn probe_cell_filter(lake: &LakeReader, key: &str, since: &str) -> Option<String> {
    let rows = lake
        .sql(&format!(
            "SELECT * FROM heartbeat WHERE device_key = '{key}' AND event_time >= '{since}' LIMIT 1"
        ))
        .await
        .ok()?;
    cell_filter_of(rows.first()?.as_object()?)
}

/// ` AND h3_rN = cell` for the coarsest H3 column of a row (the lake's sort key; the probe never
/// moves), or `None` when the row has no such column.
fn cell_filter_of(row: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    let (col, cell) = row
        .iter()
        .filter_map(|(name, v)| {
            let res: u8 = name.strip_prefix("h3_r")?.parse().ok()?;
            Some((res, name, v.as_u64()?))
        })
        .min_by_key(|(res, _, _)| *res)
        .map(|(_, name, cell)| (name.clone(), cell))?;
    Some(format!(" AND {col} = {cell}"))
}

/// Nearest-rank percentiles of a sample, in its unit (zeros when it is empty).
struct Percentiles {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    fn of(mut samples: Vec<f64>) -> Percentiles {
        samples.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if samples.is_empty() {
                0.0
            } else {
                samples[((samples.len() - 1) as f64 * p).round() as usize]
            }
        };
        Percentiles {
            n: samples.len(),
            p50: pct(0.5),
            p99: pct(0.99),
            max: samples.last().copied().unwrap_or(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_of_heartbeats_shows_the_readings_up_to_the_nth() {
        let now = Instant::now();
        let accepted: BTreeMap<u64, Instant> = [(10, now), (11, now), (13, now)].into();
        assert_eq!(visible_of_count(0, &accepted), None);
        assert_eq!(visible_of_count(1, &accepted), Some(10));
        assert_eq!(visible_of_count(3, &accepted), Some(13));
        // A reading visible before the probe knew it was accepted: all it knows are visible.
        assert_eq!(visible_of_count(4, &accepted), Some(13));
        assert_eq!(visible_of_count(1, &BTreeMap::new()), None);
    }

    #[test]
    fn the_cell_filter_uses_the_coarsest_h3_column() {
        let row = serde_json::json!({
            "device_key": "ab",
            "seq": 7,
            "h3_r12": 631051002156860415u64,
            "h3_r8": 613036603647983615u64,
            "h3_rx": 1,
        });
        assert_eq!(
            cell_filter_of(row.as_object().unwrap()).as_deref(),
            Some(" AND h3_r8 = 613036603647983615")
        );
        // No H3 column, or one that is not a cell number: no filter.
        let row = serde_json::json!({"device_key": "ab", "h3_r8": "8a1f"});
        assert_eq!(cell_filter_of(row.as_object().unwrap()), None);
    }
}
