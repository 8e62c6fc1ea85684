//! Freshness: the time from ingest's acceptance of a reading to its visibility in the query service.
//!
//! A probe device (registered like the fleet, its key derived from the seed) sends one heartbeat
//! per request every `interval`; the moment the answer arrives is its acceptance. A poller asks the
//! query service for the probe's highest sequence number in `heartbeat` every `poll`; the first poll
//! that sees sequence `s` makes every probe reading up to `s` visible. Resolution: `poll`.

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

const HOME: (f64, f64) = (52.5163, 13.3777);

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

/// Freshness figures of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Freshness {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Probe readings accepted but never seen by the end of the run.
    pub unseen: usize,
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
                    let first = ledger.as_ref().map(|l| {
                        let mut l = l.lock().expect("lock");
                        l.sent.push(Sent {
                            key: hex::encode(&s.public_key),
                            seq,
                            kind: KindName::Heartbeat,
                            class: crate::adversary::Class::Valid,
                            rows: 1,
                            answer: Answer::Pending,
                        });
                        l.sent.len() - 1
                    });
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
                    if let (Some(l), Some(first)) = (&ledger, first) {
                        l.lock().expect("lock").answer(first, 1, status, &json);
                    }
                    if status == 200 && json["accepted"].as_u64() == Some(1) {
                        accepted.lock().expect("lock").insert(seq, Instant::now());
                    }
                }
            })
        };
        let key = self.key_hex();
        // Only the last two minutes: the event_time statistics prune every older file, so a poll
        // stays cheap however large the lake grows. Once the probe's cell is known (from its first
        // visible row), the filter on it lets the page index skip all but a page or so of each
        // file (files are sorted by their coarsest cell), instead of decoding every device key.
        let since = || {
            humantime::format_rfc3339_millis(
                std::time::SystemTime::now() - Duration::from_secs(120),
            )
            .to_string()
        };
        let sql = |cell: &str| {
            format!(
                "SELECT max(seq) AS s FROM heartbeat WHERE device_key = '{key}' AND event_time >= '{}'{cell}",
                since()
            )
        };
        // Looked up once; empty (unfiltered polls) when no H3 column is found.
        let mut cell_filter: Option<String> = None;
        let mut seen_up_to = 0u64;
        let mut samples: Vec<f64> = Vec::new();
        let mut tail_deadline: Option<Instant> = None;
        loop {
            if stop.is_cancelled() && tail_deadline.is_none() {
                tail_deadline = Some(Instant::now() + timing.tail);
            }
            if let Ok(rows) = lake.sql(&sql(cell_filter.as_deref().unwrap_or(""))).await
                && let Some(s) = rows.first().and_then(|r| r["s"].as_u64())
                && s > seen_up_to
            {
                if cell_filter.is_none() {
                    cell_filter = Some(
                        probe_cell_filter(lake, &key, &since())
                            .await
                            .unwrap_or_default(),
                    );
                }
                let now = Instant::now();
                let acc = accepted.lock().expect("lock");
                for (_, at) in acc.range(seen_up_to + 1..=s) {
                    samples.push(now.duration_since(*at).as_secs_f64() * 1000.0);
                }
                seen_up_to = s;
            }
            let pending = accepted
                .lock()
                .expect("lock")
                .range(seen_up_to + 1..)
                .count();
            if tail_deadline.is_some_and(|d| Instant::now() >= d || pending == 0) {
                let _ = sender.await;
                let mut f = summarize(samples);
                f.unseen = pending;
                return f;
            }
            tokio::time::sleep(timing.poll).await;
        }
    }
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

fn summarize(mut samples: Vec<f64>) -> Freshness {
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if samples.is_empty() {
            0.0
        } else {
            samples[((samples.len() - 1) as f64 * p).round() as usize]
        }
    };
    Freshness {
        samples: samples.len(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: samples.last().copied().unwrap_or(0.0),
        unseen: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
