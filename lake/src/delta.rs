//! The lake's Delta tables: creating them, committing to their logs, and reading their snapshots.
//!
//! **Commits.** A Delta commit is the object `{table}/_delta_log/{version:020}.json`, created only
//! if absent (`PutMode::Create`: `O_EXCL` on a local disk, a conditional PUT on S3); the writer that
//! creates version `v` owns it. [`Table::commit`] tries the version after the newest it knows. When
//! another writer got there first, it reads the winning commit and asks the caller's [`Check`]
//! whether the commit still makes sense on top of it (Delta's conflict check, with the rules of our
//! writers: a unit conflicts with any commit carrying a `txn` of the same application, a compaction
//! with any commit removing one of its sources), then tries the next version. No listing is needed
//! on the commit path, and every commit of the log passes through the check, so a writer never
//! commits on top of a state it has not checked. delta-rs writes its own log only for table
//! creation, checkpoints and vacuum; everything it writes is read back through the same rules.
//!
//! **Transactions.** Each commit of a processor carries a `txn` action (application id, version)
//! per Kafka partition it covers: the version is the last offset covered. [`Table::txn_version`]
//! answers from the table's snapshot plus every commit read since.
//!
//! **Readers.** [`Table::files`] starts from the file list of a Delta kernel snapshot and then
//! applies each new commit's adds and removes to it, read by the same walk as the transactions. A
//! delta-rs snapshot updated again and again (what this replaced) made the query service, which
//! refreshes twice a second, grow by about 45 KB per live file in a debug build (issue #21). Every
//! full read of the log (the walk's base, versions pinned by sealed epochs, checkpoints, older
//! transactions) runs on threads of its own and keeps only its answer ([`Table::with_snapshot`]).
//!
//! **Log cleanup** ([`crate::compact::clean_log`]) deletes only commits older than a checkpoint. A
//! walk whose next commit is missing while `_last_checkpoint` is at or past it therefore starts
//! again from the checkpoint, instead of taking the missing commit for the end of the log.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use deltalake::kernel::{
    Action, Add, CommitInfo, DataType as DeltaType, PrimitiveType, StructField, StructType,
    Transaction,
};
use deltalake::logstore::{LogStoreRef, StorageConfig, default_logstore};
use deltalake::protocol::SaveMode;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::store::{Lake, LakeError};

mod changes;
mod log;
mod snapshot;

pub use changes::Added;
pub use log::{describe_commit, parse_commit, txn, txn_in};
use log::{encode_commit, log_path};

/// The tables' `delta.deletedFileRetentionDuration` (set when a table is created).
pub const DELETED_FILE_RETENTION: &str = "interval 1 hours";

/// Partition columns of every stream table: the event date (UTC) and hour. They are not stored in
/// the data files (Delta keeps them in the log), as usual for Delta and Hive layouts.
pub const PARTITION_COLUMNS: [&str; 2] = ["date", "hour"];

/// A commit past this many unread versions reloads the snapshot instead of reading them one by one.
const MAX_WALK: i64 = 256;

/// What the caller decides about a commit that another writer's commit now precedes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Still valid on top of it: try the next version.
    Go,
    /// No longer to be made (fenced, or already made by someone else): the reason.
    Stop(String),
}

/// A decision on the version of one application's transaction (`None`: it has none).
pub type TxnCheck = dyn Fn(Option<i64>) -> Check + Sync;

/// Outcome of [`Table::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// The commit is version `0` of the log.
    Version(i64),
    /// The check stopped it (the text says why); nothing was written.
    Stopped(String),
}

#[derive(Default)]
struct LogState {
    /// Newest version read (or written) by this handle; `None` before the first look.
    version: Option<i64>,
    /// The version this state started from (a kernel snapshot, not kept); txns not in `txns` are
    /// looked up at it, and then cached in `txns`.
    base: Option<i64>,
    /// Application transaction versions seen in commits read after `base`.
    txns: HashMap<String, i64>,
    /// Applications that `base` has no transaction of (and no commit after it has had yet).
    txn_absent: HashSet<String>,
    /// The data files at `version`, by path: `base`'s, then every commit read after it applied.
    files: BTreeMap<String, DataFile>,
}

/// One Delta table of the lake.
pub struct Table {
    /// The table's name, also its folder under the lake root.
    pub name: String,
    lake_store: Arc<dyn ObjectStore>,
    log_store: LogStoreRef,
    log: tokio::sync::Mutex<LogState>,
    /// The data files of the versions that sealed epochs pin, which never change.
    pinned: Mutex<PinnedFiles>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("name", &self.name).finish()
    }
}

/// The union of the data files of some versions of a table. Kept as one set rather than a list per
/// version: consecutive versions share nearly all their files, and an epoch pins a version every few
/// minutes under `make up`.
#[derive(Default)]
struct PinnedFiles {
    versions: BTreeSet<i64>,
    files: Arc<HashSet<String>>,
}

/// The tables of one lake, opened once per process.
#[derive(Default)]
pub struct Tables {
    open: Mutex<HashMap<String, Arc<Table>>>,
}

/// A data file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    /// Path from the lake root (`heartbeat/date=2026-11-30/hour=06/….parquet`).
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// The Add action's modification time (ms since the epoch).
    pub modified_ms: i64,
    /// Rows, from the file's statistics.
    pub rows: Option<u64>,
    /// Its `date` partition value (`YYYY-MM-DD`).
    pub date: Option<String>,
    /// Its `hour` partition value.
    pub hour: Option<u32>,
}

impl Lake {
    /// The Delta table `name` of this lake (it need not exist yet).
    pub fn table(&self, name: &str) -> Arc<Table> {
        let mut open = self.tables.open.lock().expect("tables lock");
        open.entry(name.to_string())
            .or_insert_with(|| {
                let (root, base) = self.roots();
                let location = base
                    .join(&format!("{name}/"))
                    .expect("table names are URL-safe");
                let prefixed: Arc<dyn ObjectStore> =
                    Arc::new(PrefixStore::new(self.store().clone(), Path::from(name)));
                let log_store =
                    default_logstore(prefixed, root.clone(), &location, &StorageConfig::default());
                Arc::new(Table {
                    name: name.to_string(),
                    lake_store: self.store().clone(),
                    log_store,
                    log: tokio::sync::Mutex::default(),
                    pinned: Mutex::default(),
                })
            })
            .clone()
    }
}

/// The Delta schema of a table whose files have `schema`, plus the partition columns (`date`
/// and `hour`) when `partitioned`.
fn delta_schema(schema: &SchemaRef, partitioned: bool) -> Result<StructType, LakeError> {
    use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
    let data = StructType::try_from_arrow(schema.as_ref())?;
    let mut fields: Vec<StructField> = data.fields().cloned().collect();
    if partitioned {
        fields.push(StructField::new(
            "date",
            DeltaType::Primitive(PrimitiveType::Date),
            true,
        ));
        fields.push(StructField::new(
            "hour",
            DeltaType::Primitive(PrimitiveType::Integer),
            true,
        ));
    }
    StructType::try_new(fields).map_err(|e| LakeError::Delta(e.into()))
}

impl Table {
    /// delta-rs's handle of the table's log (for its readers and checkpoints).
    pub fn log_store(&self) -> &LogStoreRef {
        &self.log_store
    }

    /// Creates the table with the schema of its data files, partitioned by `date` and `hour`,
    /// unless it exists.
    pub async fn ensure(&self, schema: &SchemaRef) -> Result<(), LakeError> {
        self.ensure_with(schema, true).await
    }

    /// Creates the table with the schema of its data files (partitioned by `date` and `hour`, or
    /// not), unless it exists.
    pub async fn ensure_with(
        &self,
        schema: &SchemaRef,
        partitioned: bool,
    ) -> Result<(), LakeError> {
        {
            let state = self.log.lock().await;
            if state.version.is_some_and(|v| v >= 0) {
                return Ok(());
            }
        }
        if self.latest_version().await?.is_some() {
            return Ok(());
        }
        let created = deltalake::operations::create::CreateBuilder::new()
            .with_log_store(self.log_store.clone())
            .with_table_name(self.name.clone())
            .with_columns(delta_schema(schema, partitioned)?.fields().cloned())
            .with_partition_columns(
                PARTITION_COLUMNS
                    .iter()
                    .copied()
                    .filter(|_| partitioned)
                    .collect::<Vec<_>>(),
            )
            .with_save_mode(SaveMode::Ignore)
            .with_configuration_property(deltalake::TableProperty::CheckpointInterval, Some("100"))
            // A checkpoint carries the files removed within this duration (tombstones): under
            // Delta's default of a week, every checkpoint (and every full read of the log) would
            // grow with a week of compactions. Vacuum needs none of them (compact::vacuum deletes
            // what the newest snapshot does not reference); one hour keeps outside VACUUMs that use
            // the table's retention from deleting files before ours would (compact_retention).
            .with_configuration_property(
                deltalake::TableProperty::DeletedFileRetentionDuration,
                Some(DELETED_FILE_RETENTION),
            )
            .await;
        match created {
            Ok(_) => Ok(()),
            // Another writer created it at the same moment.
            Err(_) if self.latest_version().await?.is_some() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The newest version of the log, by listing it (`None`: no table yet).
    pub async fn latest_version(&self) -> Result<Option<i64>, LakeError> {
        match self.log_store.get_latest_version(0).await {
            Ok(v) => Ok(Some(v as i64)),
            Err(e) => {
                if self
                    .lake_store
                    .head(&log_path(&self.name, 0))
                    .await
                    .is_err()
                {
                    Ok(None)
                } else {
                    Err(e.into())
                }
            }
        }
    }

    async fn load_base(&self, state: &mut LogState) -> Result<(), LakeError> {
        let newest = if self.has_log().await? {
            Some(self.snapshot_files(None).await?)
        } else {
            None
        };
        match newest {
            Some((version, files)) => {
                state.version = Some(version);
                state.files = files.into_iter().map(|f| (f.path.clone(), f)).collect();
                state.base = Some(version);
            }
            None => {
                state.version = Some(-1);
                state.base = None;
                state.files.clear();
            }
        }
        state.txns.clear();
        state.txn_absent.clear();
        Ok(())
    }

    /// Whether the table has a log at all (one listing; used when a load fails).
    async fn has_log(&self) -> Result<bool, LakeError> {
        let prefix = Path::from(format!("{}/_delta_log", self.name));
        let mut list = self.lake_store.list(Some(&prefix));
        use futures::StreamExt;
        Ok(list.next().await.transpose()?.is_some())
    }

    /// Reads the commit at `version`, if it exists.
    async fn read_commit(&self, version: i64) -> Result<Option<Vec<Action>>, LakeError> {
        let path = log_path(&self.name, version);
        match self.lake_store.get(&path).await {
            Ok(r) => {
                let bytes = r.bytes().await?;
                parse_commit(&bytes)
                    .map(Some)
                    .map_err(|e| LakeError::Corrupt {
                        path: path.to_string(),
                        message: e.to_string(),
                    })
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn absorb(&self, state: &mut LogState, version: i64, actions: &[Action]) {
        for a in actions {
            match a {
                Action::Txn(t) => {
                    state.txn_absent.remove(&t.app_id);
                    state.txns.insert(t.app_id.clone(), t.version);
                }
                Action::Add(add) => {
                    let f = self.data_file_of(add);
                    state.files.insert(f.path.clone(), f);
                }
                Action::Remove(r) => {
                    state.files.remove(&self.path_of(&r.path));
                }
                _ => {}
            }
        }
        state.version = Some(version);
    }

    /// The path from the lake root of a file named in this table's log (as delta-rs reads it).
    fn path_of(&self, logged: &str) -> String {
        let relative = Path::parse(logged).unwrap_or_else(|_| Path::from(logged));
        format!("{}/{relative}", self.name)
    }

    fn data_file_of(&self, add: &Add) -> DataFile {
        #[derive(serde::Deserialize)]
        struct Stats {
            #[serde(rename = "numRecords")]
            num_records: Option<u64>,
        }
        let part = |k: &str| add.partition_values.get(k).cloned().flatten();
        DataFile {
            path: self.path_of(&add.path),
            size: add.size.max(0) as u64,
            modified_ms: add.modification_time,
            rows: add
                .stats
                .as_deref()
                .and_then(|s| serde_json::from_str::<Stats>(s).ok())
                .and_then(|s| s.num_records),
            date: part("date"),
            hour: part("hour").and_then(|h| h.parse().ok()),
        }
    }

    /// The version that `_last_checkpoint` names, if any.
    pub async fn checkpoint_hint(&self) -> Result<Option<i64>, LakeError> {
        #[derive(serde::Deserialize)]
        struct Hint {
            version: i64,
        }
        let path = Path::from(format!("{}/_delta_log/_last_checkpoint", self.name));
        match self.lake_store.get(&path).await {
            Ok(r) => Ok(serde_json::from_slice::<Hint>(&r.bytes().await?)
                .ok()
                .map(|h| h.version)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Brings the state up to the newest version, reading the commits on the way.
    async fn catch_up(&self, state: &mut LogState) -> Result<(), LakeError> {
        if state.version.is_none() {
            self.load_base(state).await?;
        }
        let (mut read, mut reloaded) = (0, false);
        loop {
            let next = state.version.unwrap_or(-1) + 1;
            match self.read_commit(next).await? {
                Some(actions) => {
                    self.absorb(state, next, &actions);
                    read += 1;
                    if read > MAX_WALK {
                        self.load_base(state).await?;
                        read = 0;
                    }
                }
                // Missing, but a checkpoint covers it: log cleanup deleted it (see the module's
                // docs), and newer commits may follow.
                None if read == 0
                    && next > 0
                    && !reloaded
                    && self.checkpoint_hint().await?.is_some_and(|c| c >= next) =>
                {
                    self.load_base(state).await?;
                    reloaded = true;
                }
                None => return Ok(()),
            }
        }
    }

    async fn txn_of(&self, state: &mut LogState, app_id: &str) -> Result<Option<i64>, LakeError> {
        if let Some(v) = state.txns.get(app_id) {
            return Ok(Some(*v));
        }
        let Some(base) = state.base else {
            return Ok(None);
        };
        if state.txn_absent.contains(app_id) {
            return Ok(None);
        }
        let app = app_id.to_string();
        let found = self
            .with_snapshot(Some(base), move |snapshot, engine| {
                snapshot.get_app_id_version(&app, engine)
            })
            .await?;
        // Commits read later overwrite it (`absorb`), as they would have overridden the base.
        if let Some(v) = found {
            state.txns.insert(app_id.to_string(), v);
        } else {
            state.txn_absent.insert(app_id.to_string());
        }
        Ok(found)
    }

    /// The version of application `app_id`'s transaction at the newest version of the log.
    pub async fn txn_version(&self, app_id: &str) -> Result<Option<i64>, LakeError> {
        let mut state = self.log.lock().await;
        self.catch_up(&mut state).await?;
        self.txn_of(&mut state, app_id).await
    }

    /// Commits `actions` (with a commitInfo of `operation` and `info`) as the next version of the
    /// log. `precheck`, if given, decides on the newest state known before the first attempt from
    /// the version of one application's transaction; `check` decides on each commit that another
    /// writer made first, and, when `read_version` is given, on every commit after that version (the
    /// version of the snapshot the caller planned from).
    pub async fn commit(
        &self,
        actions: Vec<Action>,
        operation: &str,
        info: serde_json::Map<String, serde_json::Value>,
        precheck: Option<(&str, &TxnCheck)>,
        read_version: Option<i64>,
        mut check: impl FnMut(&[Action]) -> Check,
    ) -> Result<Committed, LakeError> {
        let mut state = self.log.lock().await;
        self.catch_up(&mut state).await?;
        if state.version.is_none_or(|v| v < 0) {
            return Err(LakeError::Corrupt {
                path: self.name.clone(),
                message: "no such table; create it first".into(),
            });
        }
        if let Some(read) = read_version {
            for v in read + 1..=state.version.unwrap_or(-1) {
                let Some(winner) = self.read_commit(v).await? else {
                    return Ok(Committed::Stopped(format!(
                        "version {v} is no longer in the log; plan again"
                    )));
                };
                if let Check::Stop(why) = check(&winner) {
                    return Ok(Committed::Stopped(why));
                }
            }
        }
        if let Some((app_id, decide)) = precheck {
            let current = self.txn_of(&mut state, app_id).await?;
            if let Check::Stop(why) = decide(current) {
                return Ok(Committed::Stopped(why));
            }
        }
        let mut commit_info = CommitInfo {
            timestamp: Some(crate::now_ms()),
            operation: Some(operation.to_string()),
            engine_info: Some(concat!("hexpulse/", env!("CARGO_PKG_VERSION")).to_string()),
            info: info.into_iter().collect(),
            ..Default::default()
        };
        let mut walked = 0;
        loop {
            let version = state.version.unwrap_or(-1) + 1;
            commit_info.read_version = Some(version as u64 - 1);
            let body = encode_commit(&commit_info, &actions)?;
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            let put = self
                .lake_store
                .put_opts(&log_path(&self.name, version), PutPayload::from(body), opts)
                .await;
            match put {
                Ok(_) => {
                    self.absorb(&mut state, version, &actions);
                    return Ok(Committed::Version(version));
                }
                Err(object_store::Error::AlreadyExists { .. }) => {
                    let Some(winner) = self.read_commit(version).await? else {
                        // Written and then removed (log cleanup): start from a fresh snapshot.
                        self.load_base(&mut state).await?;
                        continue;
                    };
                    self.absorb(&mut state, version, &winner);
                    if let Check::Stop(why) = check(&winner) {
                        return Ok(Committed::Stopped(why));
                    }
                    walked += 1;
                    if walked > MAX_WALK {
                        return Err(LakeError::Contended {
                            table: self.name.clone(),
                            races: MAX_WALK,
                        });
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The commit at `version`, if the log still holds it.
    pub async fn commit_at(&self, version: i64) -> Result<Option<Vec<Action>>, LakeError> {
        self.read_commit(version).await
    }

    /// The newest version known to this handle's committer (no I/O).
    pub async fn known_version(&self) -> Option<i64> {
        self.log.lock().await.version
    }

    /// The data files of the newest snapshot, sorted by path (empty when the table does not exist
    /// yet).
    pub async fn files(&self) -> Result<(Option<i64>, Vec<DataFile>), LakeError> {
        let mut state = self.log.lock().await;
        self.catch_up(&mut state).await?;
        match state.version {
            Some(v) if v >= 0 => Ok((Some(v), state.files.values().cloned().collect())),
            _ => Ok((None, Vec::new())),
        }
    }

    /// [`Table::files`], with the versions of the applications `app_ids`' transactions in the same
    /// snapshot (the live tier's seam, [`crate::live`]).
    #[allow(clippy::type_complexity)]
    pub async fn files_with_txns(
        &self,
        app_ids: &[String],
    ) -> Result<(Option<i64>, Vec<DataFile>, Vec<Option<i64>>), LakeError> {
        let mut state = self.log.lock().await;
        self.catch_up(&mut state).await?;
        let mut txns = Vec::with_capacity(app_ids.len());
        for app in app_ids {
            txns.push(self.txn_of(&mut state, app).await?);
        }
        match state.version {
            Some(v) if v >= 0 => Ok((Some(v), state.files.values().cloned().collect(), txns)),
            _ => Ok((None, Vec::new(), txns)),
        }
    }

    /// The newest version of the log (`None`: no table yet), read by the same walk as
    /// [`Table::files`].
    pub async fn version(&self) -> Result<Option<i64>, LakeError> {
        let mut state = self.log.lock().await;
        self.catch_up(&mut state).await?;
        Ok(state.version.filter(|v| *v >= 0))
    }
}
