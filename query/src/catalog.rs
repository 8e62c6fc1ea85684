//! The DataFusion catalog over the lake: which files each table reads.
//!
//! Lake tables and epoch tables read exactly the data files of their newest Delta snapshot
//! ([`SnapshotTable`]: a compaction in progress never shows rows twice, and the stream tables'
//! partition columns `date` and `hour` prune files). Epoch tables hold the sealed epochs published
//! so far (`hexpulse_lake::epoch::publish`). The catalog is rebuilt every `refresh_interval` and swapped atomically;
//! a query runs against the catalog it started with.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider, SchemaProvider,
};
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTableUrl};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SessionConfig, SessionContext};
use hexpulse_lake::Lake;
use hexpulse_lake::delta::DataFile;
use hexpulse_lake::epoch::{publish, seal, sealed_ids};
use hexpulse_schemas::tables;
use sha2::{Digest, Sha256};

use crate::live::{Ends, LiveTable, LiveTier, TopicPartition};
use crate::snapshot::SnapshotTable;

/// The URL under which the lake's object store is registered with DataFusion.
pub const LAKE_URL: &str = "hexpulse-lake://lake/";

/// Tables read from the lake's valid files. `road` and `rejected` hold raw dashcam rows and raw
/// payloads: SQL reaches them only with the `raw` endpoint group (see `sql::PRIVATE_TABLES`).
pub const LAKE_TABLES: [&str; 4] = ["heartbeat", "sensor", "road", "rejected"];
pub use hexpulse_lake::epoch::publish::EPOCH_TABLES;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("lake: {0}")]
    Lake(#[from] hexpulse_lake::LakeError),
    #[error("epochs: {0}")]
    Epoch(#[from] hexpulse_lake::epoch::EpochError),
    #[error("datafusion: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("url: {0}")]
    Url(#[from] url::ParseError),
}

impl hexpulse_common::fault::Classify for CatalogError {
    fn fault(&self) -> hexpulse_common::fault::Fault {
        use hexpulse_common::fault::Fault;
        match self {
            CatalogError::Lake(e) => e.fault(),
            CatalogError::Epoch(e) => e.fault(),
            // Registering tables that the lake describes: a lake being written may pass.
            CatalogError::DataFusion(_) => Fault::External,
            CatalogError::Url(_) => Fault::User,
        }
    }
}

/// The schema a table has when the lake holds no file of it yet.
fn empty_schema(table: &str) -> SchemaRef {
    match table {
        "heartbeat" => tables::heartbeat_schema(&[12, 8]),
        "sensor" => tables::sensor_schema(&[12, 8]),
        "road" => tables::road_schema(&[12, 8]),
        "rejected" => tables::rejected_schema(),
        epoch_table => publish::schema_of(epoch_table),
    }
}

/// The session's Parquet format (`ParquetFormat::default()` would ignore its settings).
fn parquet_format(ctx: &SessionContext) -> Arc<ParquetFormat> {
    Arc::new(ParquetFormat::default().with_options(ctx.state().table_options().parquet.clone()))
}

/// The schema of a table's newest file (files of a table differ at most by added columns, which
/// older files read as NULL); inferring from every file would read every footer on each refresh.
async fn newest_schema(ctx: &SessionContext, newest: &str) -> Result<SchemaRef, CatalogError> {
    let options = ListingOptions::new(parquet_format(ctx)).with_file_extension(".parquet");
    let url = ListingTableUrl::parse(format!("{LAKE_URL}{newest}"))?;
    Ok(options.infer_schema(&ctx.state(), &url).await?)
}

/// A Delta table: the data files of its newest snapshot; the stream tables are `partitioned` by
/// `date` and `hour`.
async fn register_delta(
    ctx: &SessionContext,
    name: &str,
    files: &[DataFile],
    partitioned: bool,
) -> Result<(), CatalogError> {
    let Some(newest) = files.last() else {
        let mut fields: Vec<_> = empty_schema(name).fields().iter().cloned().collect();
        if partitioned {
            fields.extend(crate::snapshot::partition_fields());
        }
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
        ctx.register_table(name, Arc::new(MemTable::try_new(schema, vec![vec![]])?))?;
        return Ok(());
    };
    let schema = newest_schema(ctx, &newest.path).await?;
    // Per-file statistics (for pruning) from the runtime's cache, which outlives catalog rebuilds.
    let stats = ctx.runtime_env().cache_manager.get_file_statistic_cache();
    let table = SnapshotTable::new(
        ObjectStoreUrl::parse(LAKE_URL)?,
        schema,
        files,
        partitioned,
        parquet_format(ctx),
        stats,
    );
    ctx.register_table(name, Arc::new(table))?;
    Ok(())
}

/// What the catalog was built from, for freshness answers and ETags.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Snapshot {
    pub files: BTreeMap<String, usize>,
    pub sealed_epochs: Vec<i64>,
    pub built_at_ms: i64,
    /// Changes whenever the set of valid files or sealed epochs changes (hex, 16 digits).
    pub version: String,
    /// The lowest partition watermark over the lake's topics (ms): every reading received up to it
    /// is in the lake or rejected. `None` until a processor has published one.
    pub watermark_ms: Option<i64>,
    /// The H3 resolutions the lake stores (columns `h3_r{res}`), finest last.
    pub resolutions: Vec<u8>,
    /// The live tier whose rows the stream tables add to the snapshot, if any.
    #[serde(skip)]
    pub live: Option<Arc<LiveTier>>,
}

impl Snapshot {
    /// Changes whenever an answer may change: [`Snapshot::version`], and the live rows.
    pub fn data_version(&self) -> String {
        match &self.live {
            Some(live) => format!("{}-{}", self.version, live.generation()),
            None => self.version.clone(),
        }
    }

    /// When the live rows were last read from every source (ms): answers hold what the processors
    /// had validated by then. `None` without a live tier or while no source answers.
    pub fn live_as_of_ms(&self) -> Option<i64> {
        self.live.as_ref().and_then(|l| l.as_of_ms())
    }

    pub fn finest(&self) -> u8 {
        self.resolutions.last().copied().unwrap_or(12)
    }

    /// The stored column to derive cells at `res` from: the coarsest stored resolution ≥ `res`.
    pub fn column_for(&self, res: u8) -> Option<(u8, String)> {
        self.resolutions
            .iter()
            .copied()
            .find(|r| *r >= res)
            .map(|r| (r, tables::h3_column(r)))
    }
}

/// The lowest watermark over the partitions of each topic under `_watermarks/`.
async fn lake_watermark(lake: &Lake) -> Result<Option<i64>, CatalogError> {
    let mut low: Option<i64> = None;
    for path in lake.list("_watermarks/").await? {
        let Some(bytes) = lake.get(&path).await? else {
            continue;
        };
        if let Ok(w) = serde_json::from_slice::<seal::Watermark>(&bytes) {
            low = Some(low.map_or(w.watermark_ms, |l| l.min(w.watermark_ms)));
        }
    }
    Ok(low)
}

/// DataFusion settings for the lake: its defaults, then any `DATAFUSION_*` environment variable
/// (`DATAFUSION_EXECUTION_BATCH_SIZE`, ...). Read once per catalog, not on every refresh.
fn lake_session_config() -> Result<SessionConfig, CatalogError> {
    let mut options = datafusion::config::ConfigOptions::from_env()?;
    // The lake's files carry no bloom filters; looking for them costs time on every file.
    if std::env::var_os("DATAFUSION_EXECUTION_PARQUET_BLOOM_FILTER_ON_READ").is_none() {
        options.execution.parquet.bloom_filter_on_read = false;
    }
    // A recursive CTE can double a value on every step without a function call that could bound it.
    options.execution.enable_recursive_ctes = false;
    Ok(SessionConfig::from(options)
        .with_information_schema(true)
        .with_default_catalog_and_schema(CATALOG, SCHEMA))
}

/// The catalog and schema that hold the lake's tables.
pub const CATALOG: &str = "hexpulse";
pub const SCHEMA: &str = "lake";
/// The schema of the stream tables as their Delta snapshots alone, without the live rows: what any
/// Delta reader sees (`SELECT count(*) FROM committed.heartbeat`).
pub const COMMITTED: &str = "committed";

/// One catalog build, seen two ways. `all` holds every table: the service's own endpoints use it,
/// and so does SQL from a caller with the `raw` group. `public` is the same session (functions,
/// limits, rewrites, table providers) over a catalog that does not hold
/// [`sql::PRIVATE_TABLES`](crate::sql::PRIVATE_TABLES) at all, so that no plan, `information_schema`
/// view, `DESCRIBE` or `SHOW COLUMNS` of a caller without `raw` can name them.
#[derive(Clone)]
pub struct Contexts {
    pub all: SessionContext,
    pub public: SessionContext,
}

impl Contexts {
    /// The context for SQL from a caller who may (or may not) read the private tables.
    pub fn for_sql(&self, allow_raw: bool) -> &SessionContext {
        if allow_raw { &self.all } else { &self.public }
    }
}

/// `ctx` without the private tables: a new catalog list holding one catalog and its schemas with
/// the other tables' providers (shared, not rebuilt).
async fn without_private(ctx: &SessionContext) -> Result<SessionContext, CatalogError> {
    let catalog = MemoryCatalogProvider::new();
    for name in [SCHEMA, COMMITTED] {
        let all = ctx
            .catalog(CATALOG)
            .and_then(|c| c.schema(name))
            .ok_or_else(|| {
                datafusion::error::DataFusionError::Internal(format!("no schema {CATALOG}.{name}"))
            })?;
        let schema = MemorySchemaProvider::new();
        for table in all.table_names() {
            if crate::sql::PRIVATE_TABLES.contains(&table.as_str()) {
                continue;
            }
            if let Some(provider) = all.table(&table).await? {
                schema.register_table(table, provider)?;
            }
        }
        catalog.register_schema(name, Arc::new(schema))?;
    }
    let catalogs = MemoryCatalogProviderList::new();
    catalogs.register_catalog(CATALOG.to_string(), Arc::new(catalog));
    let state = SessionStateBuilder::new_from_existing(ctx.state())
        .with_catalog_list(Arc::new(catalogs))
        .build();
    Ok(SessionContext::new_with_state(state))
}

/// Builds a fresh context over the lake; each query's expressions share `max_expression_bytes`
/// (see [`crate::bounded`]).
pub async fn build(
    lake: &Lake,
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
    max_expression_bytes: u64,
    live: Option<&Arc<LiveTier>>,
) -> Result<(Contexts, Snapshot), CatalogError> {
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_type_planner(crate::pg::system::type_planner())
        .build();
    let ctx = SessionContext::new_with_state(state);
    ctx.register_object_store(&url::Url::parse(LAKE_URL)?, lake.store().clone());
    let mut snap = Snapshot {
        built_at_ms: hexpulse_common::time::now_ms(),
        live: live.cloned(),
        ..Default::default()
    };
    // Read before the tables' files: every reading received up to it is in the files listed after.
    snap.watermark_ms = lake_watermark(lake).await?;
    let mut version = Sha256::new();
    // The partitions with live rows: each table's snapshot says, with its files, how far each of
    // them is committed (the seam, `crate::live`).
    let partitions: Vec<TopicPartition> = live
        .map(|l| l.partitions().into_iter().collect())
        .unwrap_or_default();
    let app_ids: Vec<String> = partitions
        .iter()
        .map(|(topic, p)| hexpulse_lake::unit::app_id(topic, *p))
        .collect();
    let committed = Arc::new(MemorySchemaProvider::new());
    for t in LAKE_TABLES {
        let (_, files, ends) = lake.table(t).files_with_txns(&app_ids).await?;
        snap.files.insert(t.to_string(), files.len());
        for f in &files {
            version.update(f.path.as_bytes());
            version.update([0]);
        }
        register_delta(&ctx, t, &files, true).await?;
        committed.register_table(t.to_string(), ctx.table_provider(t).await?)?;
        if let (Some(live), Some(table)) = (live, hexpulse_lake::unit::stream_table_index(t)) {
            let lake_rows = ctx.deregister_table(t)?.expect("registered above");
            let ends = Ends {
                table,
                ends: partitions.iter().cloned().zip(ends).collect(),
            };
            ctx.register_table(t, Arc::new(LiveTable::new(lake_rows, live.clone(), ends)))?;
        }
    }
    ctx.catalog(CATALOG)
        .expect("the default catalog")
        .register_schema(COMMITTED, committed)?;
    let heartbeat = ctx.table_provider("heartbeat").await?.schema();
    snap.resolutions = heartbeat
        .fields()
        .iter()
        .filter_map(|f| f.name().strip_prefix("h3_r")?.parse::<u8>().ok())
        .collect();
    snap.resolutions.sort_unstable();
    // The functions, once the finest stored resolution (for `h3_lake_cell`) is known.
    crate::udf::register(&ctx, snap.finest());
    crate::pg::system::functions(&ctx)?;
    for f in crate::sql::WITHHELD_FUNCTIONS {
        ctx.deregister_udf(f);
    }
    crate::bounded::install(&ctx, max_expression_bytes);
    // The epoch tables' newest snapshots: the outputs of the sealed epochs published so far.
    let mut published: BTreeMap<&str, std::collections::BTreeSet<i64>> = BTreeMap::new();
    for t in EPOCH_TABLES {
        let (_, files) = lake.table(&publish::table_root(t)).files().await?;
        snap.files.insert(t.to_string(), files.len());
        for f in &files {
            version.update(f.path.as_bytes());
            version.update([0]);
        }
        let ids = files.iter().filter_map(|f| publish::epoch_of_file(&f.path));
        published.insert(t, ids.collect());
        register_delta(&ctx, t, &files, false).await?;
    }
    // Sealed time whose sensor rows `sensor_hex_hourly` holds (see `preagg`): the sealed epochs
    // whose hourly rows are published.
    let mut hourly_ranges = Vec::new();
    for id in sealed_ids(lake).await? {
        if let Some(m) = seal::read_manifest(lake, id).await? {
            snap.sealed_epochs.push(id);
            if m.output(crate::preagg::HOURLY).is_some()
                && published
                    .get(crate::preagg::HOURLY)
                    .is_some_and(|ids| ids.contains(&id))
            {
                hourly_ranges.push((m.start_ms, m.end_ms));
            }
        }
    }
    for id in &snap.sealed_epochs {
        version.update(id.to_le_bytes());
    }
    snap.version = hex::encode(&version.finalize()[..8]);
    ctx.register_table(FRESHNESS, freshness_table(&snap)?)?;
    let hourly = ctx.table_provider(crate::preagg::HOURLY).await?;
    if let Some(rule) = crate::preagg::PreAggregated::new(hourly, hourly_ranges) {
        ctx.add_optimizer_rule(Arc::new(rule));
    }
    let public = without_private(&ctx).await?;
    // PostgreSQL's system catalog, in each context over its own tables.
    crate::pg::system::schema(&ctx).await?;
    crate::pg::system::schema(&public).await?;
    Ok((Contexts { all: ctx, public }, snap))
}

/// The view of what answers hold (`SELECT * FROM freshness`), on every SQL door.
pub const FRESHNESS: &str = "freshness";

/// One row of the catalog's freshness, as the HTTP answers' `freshness` says it: the lake's
/// watermark (every reading received up to it is in the lake or rejected), when the processors'
/// live rows were last read (answers hold their rows up to about then), when the catalog was
/// built, and its data version.
fn freshness_table(snap: &Snapshot) -> Result<Arc<MemTable>, CatalogError> {
    use datafusion::arrow::array::{ArrayRef, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let ts = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("watermark", ts(), true),
        Field::new("live_as_of", ts(), true),
        Field::new("catalog_built_at", ts(), false),
        Field::new("data_version", DataType::Utf8, false),
    ]));
    let at = |ms: Option<i64>| -> ArrayRef {
        Arc::new(TimestampMillisecondArray::from(vec![ms]).with_timezone("UTC"))
    };
    let row = datafusion::arrow::array::RecordBatch::try_new(
        schema.clone(),
        vec![
            at(snap.watermark_ms),
            at(snap.live_as_of_ms()),
            at(Some(snap.built_at_ms)),
            Arc::new(StringArray::from(vec![snap.data_version()])),
        ],
    )
    .map_err(datafusion::error::DataFusionError::from)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![row]])?))
}

/// The current catalog, swapped by [`Catalog::refresh`].
pub struct Catalog {
    lake: Lake,
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
    max_expression_bytes: u64,
    live: Option<Arc<LiveTier>>,
    current: RwLock<(Contexts, Snapshot)>,
}

impl Catalog {
    /// The catalog of `lake`; with `live`, the stream tables add its rows past their snapshots.
    pub async fn open(
        lake: Lake,
        runtime: Arc<RuntimeEnv>,
        max_expression_bytes: u64,
        live: Option<Arc<LiveTier>>,
    ) -> Result<Catalog, CatalogError> {
        let config = lake_session_config()?;
        let current = build(
            &lake,
            config.clone(),
            runtime.clone(),
            max_expression_bytes,
            live.as_ref(),
        )
        .await?;
        Ok(Catalog {
            lake,
            config,
            runtime,
            max_expression_bytes,
            live,
            current: RwLock::new(current),
        })
    }

    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// The context the service's own queries should use now (every table), and its snapshot.
    pub fn context(&self) -> (SessionContext, Snapshot) {
        let current = self.current.read().expect("lock");
        (current.0.all.clone(), current.1.clone())
    }

    /// The context for SQL from a caller who may (or may not) read the private tables.
    pub fn sql_context(&self, allow_raw: bool) -> SessionContext {
        self.current
            .read()
            .expect("lock")
            .0
            .for_sql(allow_raw)
            .clone()
    }

    pub async fn refresh(&self) -> Result<(), CatalogError> {
        let next = build(
            &self.lake,
            self.config.clone(),
            self.runtime.clone(),
            self.max_expression_bytes,
            self.live.as_ref(),
        )
        .await?;
        *self.current.write().expect("lock") = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refresh replaces the catalog, and the one it replaces is dropped with every table in it
    /// (here: the live tier's hold on the stream tables' ends, which trimming waits for). With
    /// `pg_catalog` holding its own catalog list strongly, the count rose by four per refresh.
    #[tokio::test]
    async fn a_replaced_catalog_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let live = Arc::new(LiveTier::new(&["http://127.0.0.1:9".into()], 1 << 20).unwrap());
        let catalog = Catalog::open(
            lake,
            Arc::new(RuntimeEnv::default()),
            64 << 20,
            Some(live.clone()),
        )
        .await
        .unwrap();
        let one = live.catalogs_alive();
        assert_eq!(one, hexpulse_lake::unit::STREAM_TABLES.len());
        // A query running on the current catalog keeps it alive through a refresh, and only it.
        let held = catalog.context().0;
        for _ in 0..3 {
            catalog.refresh().await.unwrap();
        }
        assert_eq!(live.catalogs_alive(), 2 * one);
        drop(held);
        assert_eq!(live.catalogs_alive(), one);
        drop(catalog);
        assert_eq!(live.catalogs_alive(), 0);
    }
}
