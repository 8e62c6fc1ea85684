//! `hexpulse lake ...` and compaction on demand: the lake's files, compaction, vacuum.

use std::time::Duration;

use anyhow::bail;

use crate::cli::LakeCmd;
use crate::config::Config;

async fn compact(cfg: Config, closed_after: Option<Duration>) -> anyhow::Result<()> {
    use hexpulse_lake::compact;
    let lake = hexpulse_lake::Lake::open(&cfg.process.lake_url)?;
    let rules = hexpulse_lake::rules::Rules::load(cfg.process.rules_path.as_deref())?;
    let close_after = closed_after.unwrap_or(
        rules.time.allowed_lateness + rules.time.max_future_skew + cfg.process.compact_grace,
    );
    let cut = hexpulse_common::time::now_ms() - close_after.as_millis() as i64;
    let opts = compact::CompactOptions {
        target_bytes: cfg.process.compact_target_bytes,
        memory_bytes: cfg.process.compact_memory_bytes,
        retention: cfg.process.compact_retention,
    };
    eprintln!(
        "compacting hours of {} that ended {} ago or earlier",
        cfg.process.lake_url,
        humantime::format_duration(close_after)
    );
    let done = compact::compact_closed(&lake, cut, &opts).await?;
    for (table, date, hour, outcome) in &done {
        out!("{table} {date} {hour:02}: {outcome:?}");
    }
    eprintln!("{} hour(s) compacted", done.len());
    Ok(())
}

pub(super) async fn lake(cfg: Config, c: LakeCmd) -> anyhow::Result<()> {
    use hexpulse_lake::compact;
    let lake = hexpulse_lake::Lake::open(&cfg.process.lake_url)?;
    match c {
        LakeCmd::Files { table } => {
            if !compact::tables().contains(&table.as_str()) {
                bail!(
                    "unknown table {table:?}; tables: {}",
                    compact::tables().join(", ")
                );
            }
            for f in compact::valid_files(&lake, &table).await? {
                out!("{f}");
            }
        }
        LakeCmd::Stats => {
            for table in compact::tables() {
                let (version, files) = lake.table(table).files().await?;
                let rows: u64 = files.iter().filter_map(|f| f.rows).sum();
                let version = version.map_or("-".to_string(), |v| v.to_string());
                out!(
                    "{table:10} version {version:>8} {:>8} files {rows:>12} rows",
                    files.len()
                );
            }
        }
        LakeCmd::History { table, limit } => {
            if !compact::tables().contains(&table.as_str()) {
                bail!(
                    "unknown table {table:?}; tables: {}",
                    compact::tables().join(", ")
                );
            }
            let t = lake.table(&table);
            let Some(newest) = t.latest_version().await? else {
                bail!(
                    "{table} has no Delta log yet under {}",
                    cfg.process.lake_url
                );
            };
            for v in (0..=newest).rev().take(limit) {
                let Some(actions) = t.commit_at(v).await? else {
                    out!("{v:>8} (no longer in the log: covered by a checkpoint)");
                    continue;
                };
                out!("{}", hexpulse_lake::delta::describe_commit(v, &actions));
            }
        }
        LakeCmd::Compact { closed_after } => compact(cfg, closed_after).await?,
        LakeCmd::Vacuum { retention } => {
            let retention = retention.unwrap_or(cfg.process.compact_retention);
            eprintln!(
                "deleting unreferenced files older than {}",
                humantime::format_duration(retention)
            );
            let n = compact::vacuum(&lake, retention).await?;
            eprintln!("{n} file(s) deleted");
            let n = compact::clean_log(&lake, retention).await?;
            eprintln!(
                "{n} expired log entr(y/ies) deleted (commits and checkpoints before the newest checkpoint older than that)"
            );
        }
    }
    Ok(())
}
