//! Exactly-once units of a Kafka partition, through the Delta logs of the stream tables.
//!
//! A processor handles each partition in **units**: contiguous offset ranges `[start, end]`, where
//! `start` is the previous unit's `end + 1` (the chain). The chain's end lives in the log: every
//! commit of a unit carries `txn(appId = "hexpulse-{topic}-p{partition}", version = end)`.
//!
//! Committing a unit (see ARCHITECTURE.md, "Exactly-once rows"):
//! 1. write its Parquet files under their final paths, named for the partition, range and writer
//!    (so two writers never overwrite each other's files; uncommitted files are invisible to
//!    every Delta reader and vacuum removes them);
//! 2. commit to the **gate** table (the first of [`STREAM_TABLES`]) if and only if the gate's txn
//!    version for the partition is `start - 1`: this commit is the unit's commit point. It carries
//!    the gate's Add actions and, in its commitInfo, the unit's Add actions for every other table
//!    (the unit's **intent**). A writer that finds another version there is fenced;
//! 3. commit to each other stream table, in order, its Adds (or nothing but the txn), unless its
//!    txn version for the partition is already at or past `end` (someone completed the unit).
//!
//! Every unit commits to every stream table, so a table's txn version lags the gate's only while a
//! unit is between steps 2 and 3. [`resume`] (on partition assignment) completes such a unit from its
//! intent before anything else, and returns the gate's version plus one: where the partition goes on.

use std::collections::{BTreeMap, HashMap};

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use deltalake::kernel::{Action, Add, Remove};
use hexpulse_schemas::tables;
use hexpulse_schemas::wire::KindName;
use serde::{Deserialize, Serialize};

use crate::delta::{Check, Committed, txn, txn_in};
use crate::store::{Lake, LakeError};

/// The tables every unit commits to, in commit order; the first is the gate.
pub const STREAM_TABLES: [&str; 4] = [
    KindName::Heartbeat.as_str(),
    KindName::Sensor.as_str(),
    KindName::Road.as_str(),
    tables::REJECTED_TABLE,
];

/// The index of `table` in [`STREAM_TABLES`].
pub fn stream_table_index(table: &str) -> Option<usize> {
    STREAM_TABLES.iter().position(|t| *t == table)
}

/// Key of the intent in the gate commit's commitInfo.
const INTENT_KEY: &str = "hexpulseUnit";

/// The Delta application id of a partition's transactions.
pub fn app_id(topic: &str, partition: i32) -> String {
    format!("hexpulse-{topic}-p{partition}")
}

/// One file of a unit, encoded.
#[derive(Debug, Clone)]
pub struct UnitFile {
    /// The stream table it belongs to.
    pub table: &'static str,
    /// Its partition's date (`YYYY-MM-DD`, UTC).
    pub date: String,
    /// Its partition's hour (0..23, UTC).
    pub hour: u32,
    /// The Parquet file.
    pub bytes: Bytes,
    /// Delta statistics JSON ([`crate::stats::stats_json`]).
    pub stats: String,
}

/// A unit ready to commit.
#[derive(Debug)]
pub struct Unit<'a> {
    /// The raw topic.
    pub topic: &'a str,
    /// The Kafka partition whose records it holds.
    pub partition: i32,
    /// Its first offset: the chain's end plus one.
    pub start: i64,
    /// Its last offset (included).
    pub end: i64,
    /// Unique per writer instance: keeps two writers' files apart.
    pub writer: &'a str,
    /// Its files, one per table and hour with rows.
    pub files: Vec<UnitFile>,
}

/// What [`commit_unit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitOutcome {
    /// Durable in every table.
    Committed,
    /// Another writer owns these offsets: the chain goes on at `next_offset`.
    Fenced {
        /// The chain's end plus one.
        next_offset: i64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Intent {
    topic: String,
    partition: i32,
    start: i64,
    end: i64,
    adds: BTreeMap<String, Vec<Add>>,
}

/// Path (from the table root) of a unit file.
pub fn unit_file_name(unit: &Unit<'_>, f: &UnitFile) -> String {
    format!(
        "date={}/hour={:02}/{}-p{:04}-{:020}-{:020}-{}.parquet",
        f.date, f.hour, unit.topic, unit.partition, unit.start, unit.end, unit.writer
    )
}

/// Whether a data file (path from the lake root) holds only rows of `topic`'s `partition`.
pub fn is_unit_file_of(path: &str, topic: &str, partition: i32) -> bool {
    let prefix = format!("{topic}-p{partition:04}-");
    path.rsplit('/')
        .next()
        .is_some_and(|f| f.starts_with(&prefix))
}

/// An Add action for a new file (path from the table root).
pub fn add_action(
    path: String,
    date: &str,
    hour: u32,
    size: usize,
    stats: String,
    data_change: bool,
) -> Add {
    Add {
        path,
        partition_values: HashMap::from([
            ("date".to_string(), Some(date.to_string())),
            ("hour".to_string(), Some(hour.to_string())),
        ]),
        size: size as i64,
        modification_time: crate::now_ms(),
        data_change,
        stats: Some(stats),
        ..Default::default()
    }
}

/// A Remove action (`dataChange = false`: a compaction's) for a file of the hour `date`/`hour`
/// (path from the table root), removed at `now_ms`.
pub fn remove_action(path: String, date: &str, hour: u32, size: i64, now_ms: i64) -> Remove {
    Remove {
        path,
        data_change: false,
        deletion_timestamp: Some(now_ms),
        extended_file_metadata: Some(true),
        partition_values: Some(
            [
                ("date".to_string(), Some(date.to_string())),
                ("hour".to_string(), Some(hour.to_string())),
            ]
            .into(),
        ),
        size: Some(size),
        ..Default::default()
    }
}

/// Creates the stream tables that do not exist yet, with the schemas of their files.
pub async fn ensure_tables(
    lake: &Lake,
    schema: impl Fn(&str) -> SchemaRef,
) -> Result<(), LakeError> {
    for t in STREAM_TABLES {
        lake.table(t).ensure(&schema(t)).await?;
    }
    Ok(())
}

/// Writes and commits a unit. The stream tables must exist ([`ensure_tables`]).
pub async fn commit_unit(lake: &Lake, unit: Unit<'_>) -> Result<UnitOutcome, LakeError> {
    let app = app_id(unit.topic, unit.partition);
    let mut adds: BTreeMap<&str, Vec<Add>> = BTreeMap::new();
    let mut written = Vec::new();
    for f in &unit.files {
        let name = unit_file_name(&unit, f);
        let full = format!("{}/{name}", f.table);
        lake.put(&full, f.bytes.clone()).await?;
        written.push(full);
        adds.entry(f.table).or_default().push(add_action(
            name,
            &f.date,
            f.hour,
            f.bytes.len(),
            f.stats.clone(),
            true,
        ));
    }

    // The gate: the unit's commit point.
    let gate = STREAM_TABLES[0];
    let intent = Intent {
        topic: unit.topic.to_string(),
        partition: unit.partition,
        start: unit.start,
        end: unit.end,
        adds: adds
            .iter()
            .filter(|(t, _)| **t != gate)
            .map(|(t, a)| (t.to_string(), a.clone()))
            .collect(),
    };
    let mut info = serde_json::Map::new();
    info.insert(
        INTENT_KEY.into(),
        serde_json::to_value(&intent).expect("intent serialises"),
    );
    let mut actions: Vec<Action> = vec![txn(&app, unit.end)];
    actions.extend(
        adds.remove(gate)
            .unwrap_or_default()
            .into_iter()
            .map(Action::Add),
    );
    let expected = unit.start - 1;
    let precheck = move |current: Option<i64>| {
        if current.unwrap_or(-1) == expected {
            Check::Go
        } else {
            Check::Stop(format!("the chain is at {current:?}, not {expected}"))
        }
    };
    let app_ref = app.as_str();
    let outcome = lake
        .table(gate)
        .commit(
            actions,
            "STREAMING UPDATE",
            info,
            Some((app_ref, &precheck)),
            None,
            |winner| match txn_in(winner, app_ref) {
                Some(v) => Check::Stop(format!("another writer committed up to {v}")),
                None => Check::Go,
            },
        )
        .await?;
    if let Committed::Stopped(why) = outcome {
        let current = lake.table(gate).txn_version(&app).await?;
        if current == Some(unit.end) {
            // The unit's range is committed: by an earlier attempt of this writer (a flush retried
            // after a failure past its gate commit), or by another writer with the same range.
            let (gate_adds, intent) = find_gate_commit(lake, &app, unit.end).await?;
            let referenced: std::collections::HashSet<String> = gate_adds
                .iter()
                .map(|a| format!("{gate}/{}", a.path))
                .chain(
                    intent
                        .adds
                        .iter()
                        .flat_map(|(t, adds)| adds.iter().map(move |a| format!("{t}/{}", a.path))),
                )
                .collect();
            let ours = written.iter().any(|w| referenced.contains(w));
            for path in written.iter().filter(|w| !referenced.contains(*w)) {
                lake.delete(path).await?;
            }
            let mut rest = intent.adds;
            for table in &STREAM_TABLES[1..] {
                let adds = rest.remove(*table).unwrap_or_default();
                complete(lake, table, &app, unit.end, adds).await?;
            }
            if ours {
                return Ok(UnitOutcome::Committed);
            }
        } else {
            for path in &written {
                lake.delete(path).await?;
            }
        }
        let next_offset = current.unwrap_or(-1) + 1;
        tracing::warn!(
            partition = unit.partition,
            start = unit.start,
            next_offset,
            reason = %why,
            "fenced: another writer holds this unit"
        );
        return Ok(UnitOutcome::Fenced { next_offset });
    }

    for table in &STREAM_TABLES[1..] {
        complete(
            lake,
            table,
            &app,
            unit.end,
            adds.remove(table).unwrap_or_default(),
        )
        .await?;
    }
    Ok(UnitOutcome::Committed)
}

/// Commits a unit's part of `table` unless the table's txn for `app` is already at `end` or past.
async fn complete(
    lake: &Lake,
    table: &str,
    app: &str,
    end: i64,
    adds: Vec<Add>,
) -> Result<(), LakeError> {
    let mut actions = vec![txn(app, end)];
    actions.extend(adds.into_iter().map(Action::Add));
    let precheck = move |current: Option<i64>| {
        if current.is_some_and(|v| v >= end) {
            Check::Stop("already committed".into())
        } else {
            Check::Go
        }
    };
    lake.table(table)
        .commit(
            actions,
            "STREAMING UPDATE",
            serde_json::Map::new(),
            Some((app, &precheck)),
            None,
            |winner| match txn_in(winner, app) {
                Some(v) if v >= end => Check::Stop("already committed".into()),
                _ => Check::Go,
            },
        )
        .await?;
    Ok(())
}

/// Where a partition's chain stands in the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    /// The last offset a committed unit covers (the gate table's txn version); `None` before the
    /// first unit.
    pub end: Option<i64>,
    /// A unit's gate commit is in the log but not all its other commits: its writer stopped between
    /// them, and only [`resume`] (by whoever takes the partition) completes it.
    pub unfinished: bool,
}

/// Where `topic`'s `partition` stands: its chain end, and whether the newest unit is unfinished.
pub async fn chain(lake: &Lake, topic: &str, partition: i32) -> Result<Chain, LakeError> {
    let app = app_id(topic, partition);
    let end = lake.table(STREAM_TABLES[0]).txn_version(&app).await?;
    let mut unfinished = false;
    if let Some(end) = end {
        for table in &STREAM_TABLES[1..] {
            if lake
                .table(table)
                .txn_version(&app)
                .await?
                .is_none_or(|v| v < end)
            {
                unfinished = true;
                break;
            }
        }
    }
    Ok(Chain { end, unfinished })
}

/// Where `topic`'s `partition` goes on: the first offset no unit covers. Completes on the way a
/// unit whose gate commit is in the log but whose other commits are not (a crash or a pause between
/// them).
pub async fn resume(lake: &Lake, topic: &str, partition: i32) -> Result<i64, LakeError> {
    let app = app_id(topic, partition);
    let gate = lake.table(STREAM_TABLES[0]);
    let Some(end) = gate.txn_version(&app).await? else {
        return Ok(0);
    };
    let mut intent: Option<Intent> = None;
    for table in &STREAM_TABLES[1..] {
        let behind = lake
            .table(table)
            .txn_version(&app)
            .await?
            .is_none_or(|v| v < end);
        if !behind {
            continue;
        }
        if intent.is_none() {
            intent = Some(find_gate_commit(lake, &app, end).await?.1);
        }
        let adds = intent
            .as_mut()
            .and_then(|i| i.adds.remove(*table))
            .unwrap_or_default();
        tracing::info!(
            partition,
            table,
            end,
            files = adds.len(),
            "completing a unit whose gate commit was made"
        );
        complete(lake, table, &app, end, adds).await?;
    }
    Ok(end + 1)
}

/// The gate commit that set `app`'s txn to `end`, searched from the newest commit back: its own Add
/// actions and the unit's intent.
async fn find_gate_commit(
    lake: &Lake,
    app: &str,
    end: i64,
) -> Result<(Vec<Add>, Intent), LakeError> {
    let gate = lake.table(STREAM_TABLES[0]);
    let newest = gate.known_version().await.unwrap_or(-1);
    for v in (0..=newest).rev() {
        let Some(actions) = gate.commit_at(v).await? else {
            break;
        };
        if txn_in(&actions, app) != Some(end) {
            continue;
        }
        let mut info = None;
        let mut adds = Vec::new();
        for a in actions {
            match a {
                Action::CommitInfo(c) => info = c.info.get(INTENT_KEY).cloned(),
                Action::Add(add) => adds.push(add),
                _ => {}
            }
        }
        let Some(info) = info else {
            break;
        };
        let intent = serde_json::from_value(info).map_err(|e| LakeError::Corrupt {
            path: format!("{}/_delta_log/{v:020}.json", STREAM_TABLES[0]),
            message: format!("unit intent: {e}"),
        })?;
        return Ok((adds, intent));
    }
    Err(LakeError::Corrupt {
        path: format!("{}/_delta_log", STREAM_TABLES[0]),
        message: format!("no gate commit with {app} at {end} is left in the log"),
    })
}
