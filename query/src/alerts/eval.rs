//! Which subjects of a rule fire now: devices, hexes or a pilot, each with the time its firing
//! began (schemas/ALERTS.md defines each condition).
//!
//! The clock is the lake's watermark, not the wall clock: every reading received up to it is in
//! the lake, so a pipeline that lags makes no device look offline. The SQL is composed here from
//! checked values only (cells, times, numbers, a known metric's name), never from request text.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use serde_json::{Value, json};

use super::Condition;
use crate::catalog::Catalog;
use crate::columns::{f64s, i64s, u64s};
use crate::params::rfc3339;
use crate::pilots::Pilots;
use crate::status::StatusCache;

/// One subject that fires.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    /// The device key, the hex (an H3 cell) or the pilot id.
    pub subject: String,
    /// When the condition began to hold (ms): part of the event's id.
    pub since_ms: i64,
    /// What the event tells beyond the subject (values, thresholds).
    pub details: Value,
}

/// A rule's subjects now.
#[derive(Debug, Default)]
pub struct Outcome {
    pub firing: Vec<Firing>,
    /// Subjects whose state cannot be told now (a device the status cache no longer holds): a
    /// firing one stays firing, a quiet one quiet.
    pub unknown: Vec<String>,
}

/// What the rules read: the catalog, the device status cache and the pilots.
pub struct Sources {
    pub catalog: Catalog,
    pub status: Arc<StatusCache>,
    pub pilots: Pilots,
}

impl Sources {
    /// Brings the catalog, then the status cache, up to the lake; the watermark of the catalog,
    /// whose readings both then hold (`None` until a processor has published one).
    pub async fn refresh(&self) -> Result<Option<i64>, String> {
        self.catalog.refresh().await.map_err(|e| e.to_string())?;
        self.status.refresh().await.map_err(|e| e.to_string())?;
        Ok(self.catalog.context().1.watermark_ms)
    }

    /// The subjects of `c` that fire at `now_ms` (the watermark).
    pub async fn evaluate(&self, c: &Condition, now_ms: i64) -> Result<Outcome, String> {
        match c {
            Condition::DeviceOffline { devices, after } => {
                Ok(self.offline(devices, after.as_millis() as i64, now_ms))
            }
            Condition::HexMetric {
                metric,
                above,
                duration,
                resolution,
                cells,
            } => {
                let sql = self.hex_metric_sql(
                    metric,
                    *above,
                    duration.as_millis() as i64,
                    *resolution,
                    cells.as_deref(),
                    now_ms,
                )?;
                let batches = self.query(sql).await?;
                Ok(hex_metric_firing(
                    &batches,
                    *above,
                    duration.as_millis() as i64,
                ))
            }
            Condition::PilotCoverageDrop {
                pilot,
                drop_percent,
                window,
            } => {
                self.coverage_drop(pilot, *drop_percent, window.as_millis() as i64, now_ms)
                    .await
            }
        }
    }

    fn offline(&self, devices: &[String], after_ms: i64, now_ms: i64) -> Outcome {
        let mut out = Outcome::default();
        for d in devices {
            let last = crate::status::parse_key(d).map(|k| self.status.last_heartbeat_ms(&k));
            match last {
                Some(Ok(Some(t))) if now_ms - t > after_ms => out.firing.push(Firing {
                    subject: d.clone(),
                    since_ms: t,
                    details: json!({
                        "last_heartbeat": rfc3339(t),
                        "silent_for_s": (now_ms - t) / 1000,
                        "after_s": after_ms / 1000,
                    }),
                }),
                Some(Ok(Some(_))) => {}
                _ => out.unknown.push(d.clone()),
            }
        }
        out
    }

    /// The expression of a row's cell at `res`.
    fn cell_column(&self, res: u8) -> Result<String, String> {
        let snap = self.catalog.context().1;
        let (stored, col) = snap
            .column_for(res)
            .ok_or_else(|| format!("the lake stores no cell column as fine as resolution {res}"))?;
        Ok(if stored == res {
            col
        } else {
            format!("h3_cell_to_parent({col}, {res})")
        })
    }

    /// Per hex: the first reading above the threshold after the last one at or below it, and
    /// the newest reading, over `[now - max(2 × for, 1 h), now)`.
    fn hex_metric_sql(
        &self,
        metric: &str,
        above: f64,
        for_ms: i64,
        res: u8,
        cells: Option<&[String]>,
        now_ms: i64,
    ) -> Result<String, String> {
        if !metric
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!("metric {metric:?}"));
        }
        let cell = self.cell_column(res)?;
        let from_ms = now_ms - (2 * for_ms).max(3_600_000);
        let time = crate::params::TimeRange {
            from_ms,
            to_ms: now_ms,
        }
        .sql();
        let only = match cells {
            Some(cells) => format!(" AND {}", crate::params::cells_sql(&cell, cells)),
            None => String::new(),
        };
        Ok(format!(
            "WITH r AS (SELECT {cell} AS cell, CAST(event_time AS BIGINT) AS t, value FROM sensor \
             WHERE metric = '{metric}' AND {time}{only}), \
             o AS (SELECT cell, max(CASE WHEN value <= {above:?} THEN t END) AS last_ok, \
             max(t) AS newest FROM r GROUP BY cell) \
             SELECT r.cell AS cell, min(r.t) AS since, max(o.newest) AS newest, \
             max(r.value) AS peak FROM r JOIN o ON r.cell = o.cell \
             WHERE r.value > {above:?} AND (o.last_ok IS NULL OR r.t > o.last_ok) \
             GROUP BY r.cell ORDER BY r.cell"
        ))
    }

    async fn coverage_drop(
        &self,
        pilot: &str,
        drop_percent: f64,
        window_ms: i64,
        now_ms: i64,
    ) -> Result<Outcome, String> {
        let Some(p) = self.pilots.get(pilot).await.map_err(|e| e.to_string())? else {
            // A deleted pilot: nothing to watch.
            return Ok(Outcome::default());
        };
        let cell = self.cell_column(p.resolution)?;
        // The last window ends at the watermark; the one before it starts at `end - 2w`.
        let end = now_ms;
        let time = crate::params::TimeRange {
            from_ms: end - 2 * window_ms,
            to_ms: end,
        }
        .sql();
        let sql = format!(
            "SELECT CAST(CAST(event_time AS BIGINT) >= {} AS BIGINT) AS last, \
             count(DISTINCT {cell}) AS cells FROM heartbeat WHERE {} AND {time} \
             GROUP BY 1",
            end - window_ms,
            crate::params::cells_sql(&cell, &p.cells)
        );
        let batches = self.query(sql).await?;
        let (mut before, mut last) = (0u64, 0u64);
        for b in &batches {
            for (w, n) in i64s(b, "last").into_iter().zip(i64s(b, "cells")) {
                let n = n.unwrap_or(0).max(0) as u64;
                if w == Some(1) {
                    last = n;
                } else {
                    before = n;
                }
            }
        }
        let total = p.cells.len().max(1) as f64;
        let (share_before, share_last) = (before as f64 / total, last as f64 / total);
        let mut out = Outcome::default();
        if before > 0 {
            let drop = (share_before - share_last) / share_before * 100.0;
            if drop >= drop_percent {
                // Since the watermark that first shows the drop (later evaluations keep the firing
                // this one starts).
                out.firing.push(Firing {
                    subject: p.id.clone(),
                    since_ms: end,
                    details: json!({
                        "pilot_name": p.name,
                        "windows": {
                            "before": [rfc3339(end - 2 * window_ms), rfc3339(end - window_ms)],
                            "last": [rfc3339(end - window_ms), rfc3339(end)],
                        },
                        "covered_share_before": share_before,
                        "covered_share_last": share_last,
                        "drop_percent": drop,
                        "threshold_percent": drop_percent,
                    }),
                });
            }
        }
        Ok(out)
    }

    async fn query(&self, sql: String) -> Result<Vec<RecordBatch>, String> {
        let ctx = self.catalog.context().0;
        let df = ctx.sql(&sql).await.map_err(|e| e.to_string())?;
        df.collect().await.map_err(|e| e.to_string())
    }
}

/// The hexes of the query's rows whose readings above the threshold span at least `for`.
fn hex_metric_firing(batches: &[RecordBatch], above: f64, for_ms: i64) -> Outcome {
    let mut out = Outcome::default();
    for b in batches {
        let cells = u64s(b, "cell");
        let since = i64s(b, "since");
        let newest = i64s(b, "newest");
        let peak = f64s(b, "peak");
        for i in 0..b.num_rows() {
            let (cell, Some(since), Some(newest)) = (cells[i], since[i], newest[i]) else {
                continue;
            };
            let Ok(cell) = h3o::CellIndex::try_from(cell) else {
                continue;
            };
            if newest - since >= for_ms {
                out.firing.push(Firing {
                    subject: cell.to_string(),
                    since_ms: since,
                    details: json!({
                        "above": above,
                        "for_s": for_ms / 1000,
                        "above_since": rfc3339(since),
                        "newest_reading": rfc3339(newest),
                        "peak": peak[i],
                    }),
                });
            }
        }
    }
    out
}
