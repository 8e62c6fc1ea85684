//! Sealed epochs as Delta tables: `epochs/{device_summary,hex_coverage,sensor_hex_hourly,road_hex}/`.
//!
//! The manifest is the seal (see [`super::seal`]); publishing comes after it. Each output file of
//! a sealed epoch is added to its table's log in one commit that carries the txn
//! `hexpulse-epoch-{id}` (version 0), so publishing again, after a crash or by a second sealer,
//! adds nothing twice. The tables are not partitioned (their files carry an `epoch` column, which
//! file statistics prune by); each holds one file per sealed epoch. Every Delta reader reads them,
//! and the query service reads their newest snapshots.
//!
//! An epoch sealed before these tables existed has its outputs under `epochs/epoch={id:06}/`;
//! publishing copies each (the same bytes, checked against the manifest's SHA-256) under its
//! table's folder first, because a Delta table's files live under its root.

use deltalake::kernel::{Action, Add};

use super::seal::{Manifest, read_manifest, read_output};
use super::{EpochError, sealed_ids};
use crate::delta::{Check, Committed, txn};
use crate::store::Lake;

/// The output tables of a sealed epoch.
pub const EPOCH_TABLES: [&str; 4] = [
    hexpulse_schemas::tables::DEVICE_SUMMARY_TABLE,
    "hex_coverage",
    "sensor_hex_hourly",
    "road_hex",
];

/// The Delta table (folder from the lake root) that holds the sealed outputs of `table`.
pub fn table_root(table: &str) -> String {
    format!("epochs/{table}")
}

/// Where the sealer writes `table`'s output of epoch `id` whose bytes have the SHA-256 `sha256`
/// (hex): under the table's root, named by the epoch and the first 16 hex digits of the hash.
/// Named by content, a file is never overwritten with other bytes: two sealers racing over one
/// epoch from different input versions write different files, and the manifest that wins names
/// its own.
pub fn output_path(table: &str, id: i64, sha256: &str) -> String {
    let short = sha256.get(..16).unwrap_or(sha256);
    format!("{}/epoch={id:06}-{short}.parquet", table_root(table))
}

/// The epoch of a file of an epoch table (`…/epoch=000123-<hash>.parquet`, or
/// `…/epoch=000123.parquet` as written before outputs were named by content).
pub fn epoch_of_file(path: &str) -> Option<i64> {
    let name = path.rsplit('/').next()?.strip_prefix("epoch=")?;
    let stem = name.strip_suffix(".parquet")?;
    stem.split('-').next()?.parse().ok()
}

fn app_id(epoch: i64) -> String {
    format!("hexpulse-epoch-{epoch}")
}

/// The schema of epoch table `table`'s files.
pub fn schema_of(table: &str) -> arrow::datatypes::SchemaRef {
    use hexpulse_schemas::tables;
    match table {
        "hex_coverage" => tables::hex_coverage_schema(),
        "sensor_hex_hourly" => tables::sensor_hex_hourly_schema(),
        "road_hex" => tables::road_hex_schema(),
        _ => tables::device_summary_schema(),
    }
}

/// Adds the outputs of the sealed epoch `m` to the epoch tables that do not hold them yet.
/// Returns how many tables it added to.
pub async fn publish(lake: &Lake, m: &Manifest) -> Result<usize, EpochError> {
    let app = app_id(m.epoch);
    let mut added = 0;
    for o in &m.outputs {
        let t = lake.table(&table_root(&o.table));
        t.ensure_with(&schema_of(&o.table), false).await?;
        if t.txn_version(&app).await?.is_some() {
            continue;
        }
        // Reading it checks its SHA-256, and gives the statistics for the Add.
        let batch = read_output(lake, m, &o.table).await?;
        let root = format!("{}/", table_root(&o.table));
        let path = match o.path.strip_prefix(&root) {
            Some(rel) => rel.to_string(),
            None => {
                let to = output_path(&o.table, m.epoch, &o.sha256);
                let bytes = lake
                    .get(&o.path)
                    .await?
                    .ok_or_else(|| EpochError::Invalid(format!("{} is missing", o.path)))?;
                lake.put(&to, bytes).await?;
                to[root.len()..].to_string()
            }
        };
        let add = Add {
            path,
            size: o.bytes as i64,
            modification_time: crate::now_ms(),
            data_change: true,
            stats: Some(crate::stats::stats_json(&batch)),
            ..Default::default()
        };
        let precheck = |v: Option<i64>| match v {
            None => Check::Go,
            Some(_) => Check::Stop("published already".into()),
        };
        let committed = t
            .commit(
                vec![Action::Add(add), txn(&app, 0)],
                "WRITE",
                serde_json::Map::from_iter([("epoch".to_string(), m.epoch.into())]),
                Some((app.as_str(), &precheck)),
                None,
                |winner| match crate::delta::txn_in(winner, &app) {
                    Some(_) => Check::Stop("published already".into()),
                    None => Check::Go,
                },
            )
            .await?;
        if let Committed::Version(version) = committed {
            tracing::debug!(
                epoch = m.epoch,
                table = o.table,
                version,
                "epoch output published"
            );
            added += 1;
        }
    }
    Ok(added)
}

/// Publishes every sealed epoch whose outputs an epoch table does not hold yet (after a crash
/// between a seal and its publishing, or epochs sealed before the tables existed). Returns how
/// many outputs it added.
pub async fn publish_sealed(lake: &Lake) -> Result<usize, EpochError> {
    let mut added = 0;
    for id in sealed_ids(lake).await? {
        let app = app_id(id);
        let mut done = true;
        for table in EPOCH_TABLES {
            done &= lake
                .table(&table_root(table))
                .txn_version(&app)
                .await?
                .is_some();
        }
        if done {
            continue;
        }
        if let Some(m) = read_manifest(lake, id).await? {
            added += publish(lake, &m).await?;
        }
    }
    Ok(added)
}
