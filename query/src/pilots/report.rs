//! A pilot's report, computed by the query engine over the lake and the sealed epochs.
//! schemas/PILOTS.md defines every number, so that anyone can compute them again from the lake
//! (with DuckDB, say).
//!
//! The report compares two windows of equal length over the pilot's cells: `before`, the span just
//! before the start, and `during`, from the start to the end (or to now while the pilot runs). Time
//! is the heartbeats' `event_time`; the series is hourly for pilots of up to 72 hours, daily beyond.
//! The SQL is composed here from numbers only (cells, times, epoch ids), never from request text.

use std::collections::BTreeMap;

use datafusion::arrow::array::RecordBatch;
use serde_json::{Value, json};

use super::Pilot;
use crate::columns::{f64s, i64s, strs, u64s};
use crate::params::rfc3339;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// The heartbeat columns whose percentiles the report gives.
const QUALITY: [&str; 4] = ["download_mbps", "upload_mbps", "latency_ms", "signal_dbm"];
/// Pilots up to this long get an hourly series; longer ones a daily one.
const HOURLY_UP_TO_MS: i64 = 72 * HOUR_MS;

/// The report's windows, from the pilot and the time it is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The start of `before`: `start - (end - start)`.
    pub before_from_ms: i64,
    pub start_ms: i64,
    /// The end of `during`: the pilot's end, or now while it runs (never before the start).
    pub end_ms: i64,
    /// The series' bucket, ms (an hour or a day, aligned to UTC).
    pub bucket_ms: i64,
    /// `scheduled` (not started), `running` or `ended`.
    pub status: &'static str,
}

impl Window {
    pub fn of(p: &Pilot, now_ms: i64) -> Window {
        let end_ms = p.end_ms.map_or(now_ms, |e| e.min(now_ms)).max(p.start_ms);
        let length = end_ms - p.start_ms;
        let status = if now_ms < p.start_ms {
            "scheduled"
        } else if p.end_ms.is_some_and(|e| e <= now_ms) {
            "ended"
        } else {
            "running"
        };
        Window {
            before_from_ms: p.start_ms - length,
            start_ms: p.start_ms,
            end_ms,
            bucket_ms: if length <= HOURLY_UP_TO_MS {
                HOUR_MS
            } else {
                DAY_MS
            },
            status,
        }
    }

    /// The buckets' starts from the one holding `before_from` to the one holding `end - 1`.
    fn buckets(&self) -> Vec<i64> {
        if self.end_ms <= self.before_from_ms {
            return Vec::new();
        }
        let first = self.before_from_ms.div_euclid(self.bucket_ms) * self.bucket_ms;
        (0..)
            .map(|i| first + i * self.bucket_ms)
            .take_while(|b| *b < self.end_ms)
            .collect()
    }

    fn unit(&self) -> &'static str {
        if self.bucket_ms == HOUR_MS {
            "hour"
        } else {
            "day"
        }
    }
}

/// The SQL the report runs. `cell` is the expression of a row's cell at the pilot's resolution.
pub struct Queries {
    pub series: String,
    pub cells: String,
    pub quality: String,
}

/// The filter of a pilot's heartbeats in `[from, to)`.
fn heartbeats_in(p: &Pilot, cell: &str, from_ms: i64, to_ms: i64) -> String {
    format!(
        "{} AND {}",
        crate::params::cells_sql(cell, &p.cells),
        crate::params::TimeRange { from_ms, to_ms }.sql()
    )
}

pub fn queries(p: &Pilot, w: &Window, cell: &str) -> Queries {
    let both = heartbeats_in(p, cell, w.before_from_ms, w.end_ms);
    let bucket = w.bucket_ms;
    let start = w.start_ms;
    Queries {
        series: format!(
            "SELECT CAST(event_time AS BIGINT) / {bucket} * {bucket} AS bucket, \
             count(DISTINCT {cell}) AS cells, count(DISTINCT device_key) AS devices, \
             count(*) AS heartbeats, CAST(max(event_time) AS BIGINT) AS newest \
             FROM heartbeat WHERE {both} GROUP BY 1 ORDER BY 1"
        ),
        cells: format!(
            "SELECT {cell} AS cell, \
             min(CASE WHEN CAST(event_time AS BIGINT) >= {start} THEN CAST(event_time AS BIGINT) END) \
             AS first_during, \
             max(CASE WHEN CAST(event_time AS BIGINT) < {start} THEN 1 ELSE 0 END) AS before \
             FROM heartbeat WHERE {both} GROUP BY 1"
        ),
        quality: {
            let pct = |col: &str| {
                [10, 50, 90]
                    .iter()
                    .map(|q| format!("percentile_cont(CAST({col} AS DOUBLE), 0.{q}) AS {col}_p{q}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!(
                "SELECT CASE WHEN CAST(event_time AS BIGINT) < {start} THEN 'before' ELSE 'during' END \
                 AS phase, count(DISTINCT device_key) AS devices, count(download_mbps) AS speed_tests, \
                 {} FROM heartbeat WHERE {both} GROUP BY 1",
                QUALITY.map(pct).join(", ")
            )
        },
    }
}

/// The sum of points the pilot's devices earned in `epochs`: devices with a heartbeat in the area
/// during the pilot.
pub fn cost_query(p: &Pilot, w: &Window, cell: &str, epochs: &[i64]) -> Option<String> {
    if epochs.is_empty() {
        return None;
    }
    let during = heartbeats_in(p, cell, w.start_ms, w.end_ms);
    let ids: Vec<String> = epochs.iter().map(i64::to_string).collect();
    Some(format!(
        "SELECT epoch, CAST(sum(reward_points) AS BIGINT) AS points, count(*) AS devices \
         FROM device_summary WHERE epoch IN ({}) AND device_key IN \
         (SELECT DISTINCT device_key FROM heartbeat WHERE {during}) GROUP BY 1 ORDER BY 1",
        ids.join(", ")
    ))
}

/// What the queries answered.
pub struct Answers<'a> {
    pub series: &'a [RecordBatch],
    pub cells: &'a [RecordBatch],
    pub quality: &'a [RecordBatch],
    /// `None` without sealed epochs in the window.
    pub cost: Option<&'a [RecordBatch]>,
    /// The sealed epochs the cost rests on: id, start and end (ms), Merkle root.
    pub epochs: &'a [(i64, i64, i64, String)],
    pub price_per_point_usd: f64,
}

fn share(n: u64, of: usize) -> f64 {
    if of == 0 { 0.0 } else { n as f64 / of as f64 }
}

/// The time from the start until `fraction` of the cells covered during the pilot had been covered
/// at least once, in hours: the earliest first heartbeat by which that many cells had one.
fn hours_to(first: &[i64], start_ms: i64, fraction: f64) -> Option<f64> {
    if first.is_empty() {
        return None;
    }
    let need = ((first.len() as f64) * fraction).ceil().max(1.0) as usize;
    first
        .get(need - 1)
        .map(|t| (t - start_ms) as f64 / HOUR_MS as f64)
}

/// The report as JSON, and the newest event time it saw.
pub fn assemble(p: &Pilot, w: &Window, a: &Answers) -> (Value, Option<i64>) {
    let area = p.cells.len();
    // Per bucket: covered cells, active devices, heartbeats.
    let mut by_bucket: BTreeMap<i64, (u64, u64, u64)> = BTreeMap::new();
    let mut newest = None;
    for b in a.series {
        let (t, cells, devices, hbs, nw) = (
            i64s(b, "bucket"),
            u64s(b, "cells"),
            u64s(b, "devices"),
            u64s(b, "heartbeats"),
            i64s(b, "newest"),
        );
        for i in 0..b.num_rows() {
            if let Some(t) = t[i] {
                by_bucket.insert(t, (cells[i], devices[i], hbs[i]));
            }
            newest = newest.max(nw[i]);
        }
    }
    // Per cell: covered before; first heartbeat during.
    let mut before = 0u64;
    let mut first_during = Vec::new();
    let mut dead_to_covered = Vec::new();
    for b in a.cells {
        let (cell, first, was) = (u64s(b, "cell"), i64s(b, "first_during"), u64s(b, "before"));
        for i in 0..b.num_rows() {
            before += was[i];
            if let Some(f) = first[i] {
                first_during.push(f);
                if was[i] == 0
                    && let Ok(c) = h3o::CellIndex::try_from(cell[i])
                {
                    dead_to_covered.push(c.to_string());
                }
            }
        }
    }
    first_during.sort_unstable();
    dead_to_covered.sort();
    let during = first_during.len() as u64;
    let series: Vec<Value> = w
        .buckets()
        .into_iter()
        .map(|t| {
            let (cells, devices, heartbeats) = by_bucket.get(&t).copied().unwrap_or_default();
            let end = t + w.bucket_ms;
            let cumulative = if t < w.start_ms {
                None
            } else {
                Some(first_during.partition_point(|f| *f < end) as u64)
            };
            json!({
                "bucket_start": rfc3339(t),
                "phase": if t < w.start_ms { "before" } else { "during" },
                "covered_cells": cells,
                "covered_share": share(cells, area),
                "cumulative_covered_cells": cumulative,
                "cumulative_covered_share": cumulative.map(|c| share(c, area)),
                "active_devices": devices,
                "heartbeats": heartbeats,
            })
        })
        .collect();
    // Quality and active devices per phase (a phase without heartbeats: no tests, no percentiles).
    let empty = {
        let mut q = json!({"speed_tests": 0});
        for name in QUALITY {
            q[name] = json!({"p10": null, "p50": null, "p90": null});
        }
        q
    };
    let mut quality = json!({"before": empty.clone(), "during": empty});
    let mut devices = BTreeMap::new();
    for b in a.quality {
        let phase = strs(b, "phase");
        let (n_dev, tests) = (u64s(b, "devices"), u64s(b, "speed_tests"));
        let cols: Vec<(&str, [Vec<Option<f64>>; 3])> = QUALITY
            .iter()
            .map(|c| (*c, [10, 50, 90].map(|q| f64s(b, &format!("{c}_p{q}")))))
            .collect();
        for i in 0..b.num_rows() {
            let mut q = json!({"speed_tests": tests[i]});
            for (name, ps) in &cols {
                q[*name] = json!({"p10": ps[0][i], "p50": ps[1][i], "p90": ps[2][i]});
            }
            devices.insert(phase[i].clone(), n_dev[i]);
            quality[phase[i].as_str()] = q;
        }
    }
    // Cost: the points of the area's devices in the sealed epochs of the window.
    let mut points = 0u64;
    let mut per_epoch = Vec::new();
    for b in a.cost.unwrap_or_default() {
        let (e, pts, n) = (i64s(b, "epoch"), u64s(b, "points"), u64s(b, "devices"));
        for i in 0..b.num_rows() {
            points += pts[i];
            per_epoch.push(json!({"epoch": e[i], "points": pts[i], "devices": n[i]}));
        }
    }
    let rewards = points as f64 * a.price_per_point_usd;
    let per_cell = (during > 0).then(|| rewards / during as f64);
    let baseline_per_cell = p.baseline.cost_per_site_usd;
    let report = json!({
        "pilot": {
            "id": p.id, "name": p.name, "resolution": p.resolution, "cells": area,
            "start": p.start, "end": p.end,
        },
        "status": w.status,
        "windows": {
            "before": {"from": rfc3339(w.before_from_ms), "to": rfc3339(w.start_ms)},
            "during": {"from": rfc3339(w.start_ms), "to": rfc3339(w.end_ms)},
            "bucket": w.unit(),
        },
        "coverage": {
            "covered_cells_before": before,
            "covered_share_before": share(before, area),
            "covered_cells_during": during,
            "covered_share_during": share(during, area),
            "dead_to_covered": dead_to_covered,
            "rests_on": {"tables": ["heartbeat"], "epochs": []},
        },
        "quality": {
            "before": quality["before"],
            "during": quality["during"],
            "rests_on": {"tables": ["heartbeat"], "epochs": []},
        },
        "deployment": {
            "active_devices_before": devices.get("before").copied().unwrap_or(0),
            "active_devices_during": devices.get("during").copied().unwrap_or(0),
            "hours_to_50pct_coverage": hours_to(&first_during, w.start_ms, 0.5),
            "hours_to_90pct_coverage": hours_to(&first_during, w.start_ms, 0.9),
            "baseline_days_to_deploy": p.baseline.days_to_deploy,
            "rests_on": {"tables": ["heartbeat"], "epochs": []},
        },
        "cost": {
            "points": points,
            "price_per_point_usd": a.price_per_point_usd,
            "rewards_usd": rewards,
            "cost_per_covered_cell_usd": per_cell,
            "baseline_cost_per_covered_cell_usd": baseline_per_cell,
            "ratio_to_baseline": per_cell.map(|c| c / baseline_per_cell),
            "per_epoch": per_epoch,
            "rests_on": {
                "tables": ["heartbeat", "device_summary"],
                "epochs": a.epochs.iter().map(|(id, s, e, root)| json!({
                    "epoch": id, "start": rfc3339(*s), "end": rfc3339(*e), "merkle_root": root,
                })).collect::<Vec<_>>(),
            },
        },
        "series": series,
    });
    (report, newest)
}

/// The covered cells of the area: cell → (covered before, covered during).
pub fn cell_states(cells: &[RecordBatch]) -> BTreeMap<u64, (bool, bool)> {
    let mut out = BTreeMap::new();
    for b in cells {
        let (cell, first, was) = (u64s(b, "cell"), i64s(b, "first_during"), u64s(b, "before"));
        for i in 0..b.num_rows() {
            out.insert(cell[i], (was[i] > 0, first[i].is_some()));
        }
    }
    out
}

/// The series as CSV: one line per bucket.
pub fn series_csv(report: &Value) -> String {
    let mut out = String::from(
        "bucket_start,phase,covered_cells,covered_share,cumulative_covered_cells,\
         cumulative_covered_share,active_devices,heartbeats\n",
    );
    let field = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for row in report["series"].as_array().into_iter().flatten() {
        let cols = [
            "bucket_start",
            "phase",
            "covered_cells",
            "covered_share",
            "cumulative_covered_cells",
            "cumulative_covered_share",
            "active_devices",
            "heartbeats",
        ];
        let line: Vec<String> = cols.iter().map(|c| field(&row[*c])).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pilot(start_ms: i64, end_ms: Option<i64>) -> Pilot {
        Pilot {
            id: "0123456789abcdef".into(),
            name: "t".into(),
            area: None,
            resolution: 8,
            cells: vec!["881f1d4887fffff".into()],
            start: String::new(),
            start_ms,
            end: None,
            end_ms,
            baseline: super::super::Baseline::default(),
            baseline_is_default: true,
            created: String::new(),
            created_by: String::new(),
        }
    }

    #[test]
    fn windows_follow_the_pilot_and_the_clock() {
        let h = HOUR_MS;
        let w = Window::of(&pilot(10 * h, None), 40 * h);
        assert_eq!(
            (w.before_from_ms, w.end_ms, w.bucket_ms, w.status),
            (-20 * h, 40 * h, h, "running")
        );
        assert_eq!(w.buckets().len(), 60);
        let w = Window::of(&pilot(10 * h, Some(20 * h)), 100 * h);
        assert_eq!((w.before_from_ms, w.end_ms, w.status), (0, 20 * h, "ended"));
        let w = Window::of(&pilot(10 * DAY_MS, None), 20 * DAY_MS + h);
        assert_eq!(w.bucket_ms, DAY_MS);
        // Ten days and an hour before the start: from the day before day 0.
        assert_eq!(w.buckets().first(), Some(&-DAY_MS));
        assert_eq!(w.buckets().len(), 22);
        let w = Window::of(&pilot(10 * h, None), 5 * h);
        assert_eq!((w.status, w.end_ms), ("scheduled", 10 * h));
        assert!(w.buckets().is_empty());
    }

    #[test]
    fn time_to_coverage_counts_first_heartbeats() {
        let h = HOUR_MS;
        let first = [h, 2 * h, 3 * h, 10 * h];
        assert_eq!(hours_to(&first, 0, 0.5), Some(2.0));
        assert_eq!(hours_to(&first, 0, 0.9), Some(10.0));
        assert_eq!(hours_to(&[], 0, 0.5), None);
    }
}
