//! `hexpulse bench lake`: what the Delta log itself costs over a day of the processors' commits.
//!
//! One table (`heartbeat`, in a temporary local lake) receives a simulated day: every `unit_secs`
//! of simulated time, each of `partitions` writers commits one unit, as a processor does (one Add
//! with statistics, and the txn of its Kafka partition; the commit checks the txn version first).
//! The data files are placeholders: the log is what is measured. As the processors' maintenance
//! round does, a checkpoint is written once a minute of simulated time when 100 versions have
//! passed, every closed hour is compacted in one OPTIMIZE commit (remove the hour's files, add
//! one), and with `--clean-log` the expired log entries are deleted. The day runs as fast as the
//! machine commits.
//!
//! Reported: commits per second and commit latency p50/p99 over the day (the checkpoint and
//! compaction time is not in them), the size of `_delta_log/` at the end, and the time to open
//! the table as a new process would (newest checkpoint, then the commits after it) and to bring an
//! open table up to date after one more commit (what a query refresh does).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use deltalake::kernel::Action;
use hexpulse_lake::delta::{Check, Committed, txn};
use hexpulse_lake::unit::{add_action, remove_action};
use hexpulse_lake::{Lake, compact, date_hour};
use serde::Serialize;

use super::query::percentile;

#[derive(clap::Args, Debug, Clone)]
pub struct LakeArgs {
    /// Simulated hours of commits.
    #[arg(long, default_value_t = 24)]
    pub hours: u32,
    /// Writers (Kafka partitions), each committing one unit per `--unit-secs`.
    #[arg(long, default_value_t = 2)]
    pub partitions: i32,
    /// Simulated seconds between one writer's units.
    #[arg(long, default_value_t = 1)]
    pub unit_secs: u32,
    /// Delete expired log entries in every maintenance round, with no retention (`hexpulse lake
    /// vacuum` and the processors do this with `process.compact_retention`). Without it, the whole
    /// day stays in the log, as it does when the retention is longer than a day.
    #[arg(long)]
    pub clean_log: bool,
    /// Keep the lake in this directory (it must not exist yet); without it the lake is temporary.
    #[arg(long)]
    pub lake: Option<PathBuf>,
    /// Write the JSON report here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Report {
    hours: u32,
    partitions: i32,
    unit_secs: u32,
    clean_log: bool,
    commits: usize,
    compactions: usize,
    checkpoints: usize,
    day_s: f64,
    commits_per_s: f64,
    commit_p50_ms: f64,
    commit_p99_ms: f64,
    log_files: usize,
    log_mb: f64,
    open_ms: f64,
    refresh_ms: f64,
    live_files: usize,
}

const TABLE: &str = "heartbeat";

pub async fn lake(args: LakeArgs) -> anyhow::Result<()> {
    if args.partitions < 1 || args.unit_secs < 1 || args.hours < 1 {
        bail!("--hours, --partitions and --unit-secs must be at least 1");
    }
    let dir = match &args.lake {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("hexpulse-bench-lake-{}", std::process::id())),
    };
    if dir.exists() {
        bail!("{} exists: give a new directory", dir.display());
    }
    std::fs::create_dir_all(&dir)?;
    let url = dir.to_str().context("lake path is not UTF-8")?.to_string();
    let lake = Lake::open(&url)?;
    let schema = hexpulse_schemas::tables::heartbeat_schema(&[12, 8]);
    lake.table(TABLE).ensure(&schema).await?;
    let table = lake.table(TABLE);

    // The day starts at a midnight a week ago (UTC), so that every hour of it is closed.
    let day0 = (hexpulse_common::time::now_ms() / 86_400_000 - 7) * 86_400_000;
    let steps = args.hours as i64 * 3_600 / args.unit_secs as i64;
    let total = steps as usize * args.partitions as usize;
    eprintln!(
        "[bench] lake: {} simulated hours, {} writers, a unit every {} s: {total} commits",
        args.hours, args.partitions, args.unit_secs
    );
    // Live placeholder files per (date, hour), for the hourly compactions.
    let mut live: BTreeMap<(String, u32), Vec<(String, i64)>> = BTreeMap::new();
    let mut latencies = Vec::with_capacity(total);
    let (mut compactions, mut checkpoints) = (0, 0);
    let mut offsets = vec![0i64; args.partitions as usize];
    let mut last_minute = 0;
    let started = Instant::now();
    let mut commit_s = 0.0;
    for step in 0..steps {
        let at = day0 + step * args.unit_secs as i64 * 1_000;
        let (date, hour) = date_hour(at);
        for p in 0..args.partitions {
            let start = offsets[p as usize];
            let end = start + 100 * args.unit_secs as i64 - 1;
            offsets[p as usize] = end + 1;
            let name = format!("date={date}/hour={hour:02}/raw-p{p:04}-{start:020}.parquet");
            let size = 40_000;
            let add = add_action(name.clone(), &date, hour, size, placeholder_stats(), true);
            let app = format!("hexpulse-raw-p{p}");
            let precheck = move |v: Option<i64>| {
                if v.is_none_or(|v| v < start) {
                    Check::Go
                } else {
                    Check::Stop(format!("offset {start} is committed already"))
                }
            };
            let t = Instant::now();
            let committed = table
                .commit(
                    vec![Action::Add(add), txn(&app, end)],
                    "WRITE",
                    serde_json::Map::new(),
                    Some((app.as_str(), &precheck)),
                    None,
                    |_| Check::Go,
                )
                .await?;
            let took = t.elapsed().as_secs_f64();
            if !matches!(committed, Committed::Version(_)) {
                bail!("commit stopped: {committed:?}");
            }
            commit_s += took;
            latencies.push(took * 1_000.0);
            live.entry((date.clone(), hour))
                .or_default()
                .push((name, size as i64));
        }
        // The maintenance round, once a simulated minute.
        let minute = (step * args.unit_secs as i64) / 60;
        if minute != last_minute {
            last_minute = minute;
            let before = std::fs::read_dir(dir.join(TABLE).join("_delta_log"))?.count();
            compact::checkpoint(&lake, 100).await?;
            if std::fs::read_dir(dir.join(TABLE).join("_delta_log"))?.count() > before {
                checkpoints += 1;
            }
            if args.clean_log {
                compact::clean_log(&lake, std::time::Duration::ZERO).await?;
            }
            let (cur_date, cur_hour) = date_hour(at);
            let closed: Vec<(String, u32)> = live
                .keys()
                .filter(|k| (k.0.as_str(), k.1) < (cur_date.as_str(), cur_hour))
                .cloned()
                .collect();
            for key in closed {
                let files = live.remove(&key).unwrap_or_default();
                if files.len() > 1 {
                    compact_placeholders(&table, &key, &files).await?;
                    compactions += 1;
                }
            }
        }
        if step % (steps / 24).max(1) == 0 && step > 0 {
            eprintln!(
                "[bench]   {:>5.1} h simulated: {} commits, {:.0} commits/s so far",
                (step * args.unit_secs as i64) as f64 / 3_600.0,
                latencies.len(),
                latencies.len() as f64 / commit_s
            );
        }
    }
    let day_s = started.elapsed().as_secs_f64();

    let (log_files, log_bytes) = dir_size(&dir.join(TABLE).join("_delta_log"))?;
    // A new process opens the table: newest checkpoint, then the commits after it.
    let t = Instant::now();
    let fresh = Lake::open(&url)?;
    let (_, files) = fresh.table(TABLE).files().await?;
    let open_ms = t.elapsed().as_secs_f64() * 1_000.0;
    // One more commit, and the open table catches up with it (a query refresh).
    table
        .commit(
            vec![txn("hexpulse-bench-refresh", 0)],
            "WRITE",
            serde_json::Map::new(),
            None,
            None,
            |_| Check::Go,
        )
        .await?;
    let t = Instant::now();
    fresh.table(TABLE).files().await?;
    let refresh_ms = t.elapsed().as_secs_f64() * 1_000.0;

    let report = Report {
        hours: args.hours,
        partitions: args.partitions,
        unit_secs: args.unit_secs,
        clean_log: args.clean_log,
        commits: latencies.len(),
        compactions,
        checkpoints,
        day_s,
        commits_per_s: latencies.len() as f64 / commit_s,
        commit_p50_ms: percentile(&latencies, 0.5),
        commit_p99_ms: percentile(&latencies, 0.99),
        log_files,
        log_mb: log_bytes as f64 / 1e6,
        open_ms,
        refresh_ms,
        live_files: files.len(),
    };
    eprintln!(
        "[bench] lake{}: {:.0} commits/s, commit p50 {:.2} ms, p99 {:.2} ms; after the day: {} log \
         files ({:.0} MB), open {:.0} ms, refresh {:.1} ms",
        if args.clean_log { " (log cleaned)" } else { "" },
        report.commits_per_s,
        report.commit_p50_ms,
        report.commit_p99_ms,
        report.log_files,
        report.log_mb,
        report.open_ms,
        report.refresh_ms
    );
    if args.lake.is_none() {
        std::fs::remove_dir_all(&dir)?;
    }
    super::emit_report(&report, args.out)
}

/// Column statistics of a placeholder file, as large as a real unit's (a row count and the min and
/// max of a few columns).
fn placeholder_stats() -> String {
    serde_json::json!({
        "numRecords": 100,
        "minValues": {"event_time": "2026-11-23T00:00:00.000Z", "device_key": "00", "seq": 1, "h3_r8": 1, "h3_r12": 1},
        "maxValues": {"event_time": "2026-11-23T00:00:01.000Z", "device_key": "ff", "seq": 9, "h3_r8": 9, "h3_r12": 9},
        "nullCount": {"event_time": 0, "device_key": 0, "seq": 0, "h3_r8": 0, "h3_r12": 0}
    })
    .to_string()
}

/// One OPTIMIZE commit that replaces an hour's placeholder files with one.
async fn compact_placeholders(
    table: &hexpulse_lake::Table,
    (date, hour): &(String, u32),
    files: &[(String, i64)],
) -> anyhow::Result<()> {
    let now = hexpulse_common::time::now_ms();
    let mut actions: Vec<Action> = files
        .iter()
        .map(|(path, size)| Action::Remove(remove_action(path.clone(), date, *hour, *size, now)))
        .collect();
    let merged = format!("date={date}/hour={hour:02}/compacted-bench.parquet");
    let size = files.iter().map(|f| f.1).sum::<i64>() as usize;
    actions.push(Action::Add(add_action(
        merged,
        date,
        *hour,
        size,
        placeholder_stats(),
        false,
    )));
    table
        .commit(
            actions,
            "OPTIMIZE",
            serde_json::Map::new(),
            None,
            None,
            |_| Check::Go,
        )
        .await?;
    Ok(())
}

fn dir_size(dir: &std::path::Path) -> anyhow::Result<(usize, u64)> {
    let (mut n, mut bytes) = (0, 0);
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_file() {
            n += 1;
            bytes += e.metadata()?.len();
        }
    }
    Ok((n, bytes))
}
