//! A Delta table of the lake at one snapshot, as a DataFusion table (the stream tables, and the
//! epoch tables, which have no partition columns).
//!
//! It reads exactly the snapshot's data files, as the Delta log lists them (path, size and
//! modification time from their Add actions): nothing is listed and no file is asked for its size
//! when a query plans, so compacted-away files are never read and a query over thousands of files
//! makes no request per file to the object store. The table's columns are the newest file's columns
//! followed by the Delta partition columns `date` (event date, UTC) and `hour`, as other Delta
//! readers show them. Filters on those columns alone pick files by their partition values; every
//! other filter reaches the Parquet scan, which prunes files, row groups and pages by statistics.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{NaiveDate, TimeZone, Utc};
use datafusion::arrow::array::{Array, BooleanArray, Date32Array, Int32Array, RecordBatch};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::stats::Statistics;
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::datasource::TableProvider;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::listing::helpers::expr_applicable_for_cols;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchemaBuilder;
use datafusion::execution::cache::cache_manager::{
    CachedFileMetadata, FileStatisticsCache, SchemaFingerprint, TableScopedPath,
};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use futures::{StreamExt, TryStreamExt};
use hexpulse_lake::delta::DataFile;
use object_store::ObjectMeta;
use object_store::path::Path;

/// The partition columns of the lake's Delta tables, after the file columns.
pub const PARTITION_COLUMNS: [&str; 2] = ["date", "hour"];

/// The partition columns' fields (as the live rows carry them too).
pub use hexpulse_lake::live::partition_fields;

/// One data file of the snapshot, with its partition values.
#[derive(Debug, Clone)]
struct SnapshotFile {
    meta: ObjectMeta,
    /// Days since 1970-01-01.
    date: Option<i32>,
    hour: Option<i32>,
}

#[derive(Debug)]
pub struct SnapshotTable {
    store_url: ObjectStoreUrl,
    /// The newest file's columns.
    file_schema: SchemaRef,
    fingerprint: Arc<SchemaFingerprint>,
    /// File columns, then the partition columns.
    schema: SchemaRef,
    files: Vec<SnapshotFile>,
    /// Whether the table has the partition columns `date` and `hour`.
    partitioned: bool,
    format: Arc<ParquetFormat>,
    statistics: Option<Arc<FileStatisticsCache>>,
}

impl SnapshotTable {
    /// The table over `files` (paths from the store's root), whose file columns are `file_schema`,
    /// followed by the partition columns when `partitioned`. Per-file statistics go through
    /// `statistics` (the runtime's cache, which outlives catalogs).
    pub fn new(
        store_url: ObjectStoreUrl,
        file_schema: SchemaRef,
        files: &[DataFile],
        partitioned: bool,
        format: Arc<ParquetFormat>,
        statistics: Option<Arc<FileStatisticsCache>>,
    ) -> SnapshotTable {
        let mut fields: Vec<Arc<Field>> = file_schema.fields().iter().cloned().collect();
        if partitioned {
            fields.extend(partition_fields());
        }
        let schema = Arc::new(Schema::new_with_metadata(
            fields,
            file_schema.metadata().clone(),
        ));
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("static");
        let files = files
            .iter()
            .map(|f| SnapshotFile {
                meta: ObjectMeta {
                    location: Path::from(f.path.as_str()),
                    last_modified: Utc
                        .timestamp_millis_opt(f.modified_ms)
                        .single()
                        .unwrap_or_default(),
                    size: f.size,
                    e_tag: None,
                    version: None,
                },
                date: f
                    .date
                    .as_deref()
                    .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
                    .map(|d| (d - epoch).num_days() as i32),
                hour: f.hour.map(|h| h as i32),
            })
            .collect();
        SnapshotTable {
            store_url,
            fingerprint: Arc::new(SchemaFingerprint::from_schema(&file_schema)),
            file_schema,
            schema,
            files,
            partitioned,
            format,
            statistics,
        }
    }

    /// The files whose partition values pass every filter on the partition columns alone.
    fn prune(&self, state: &dyn Session, filters: &[Expr]) -> Result<Vec<SnapshotFile>> {
        let Some(filter) = conjunction(filters.iter().cloned()) else {
            return Ok(self.files.clone());
        };
        if !self.partitioned {
            return Ok(self.files.clone());
        }
        let schema = Arc::new(Schema::new(partition_fields()));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(self.files.iter().map(|f| f.date).collect::<Date32Array>()),
                Arc::new(self.files.iter().map(|f| f.hour).collect::<Int32Array>()),
            ],
        )?;
        let expr = state.create_physical_expr(filter, &DFSchema::try_from(schema)?)?;
        let keep = expr.evaluate(&batch)?.into_array(batch.num_rows())?;
        let keep = keep
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| {
                datafusion::error::DataFusionError::Internal("partition filter not boolean".into())
            })?;
        Ok(self
            .files
            .iter()
            .enumerate()
            .filter(|(i, _)| keep.is_valid(*i) && keep.value(*i))
            .map(|(_, f)| f.clone())
            .collect())
    }

    /// A file to scan, with its partition values and statistics (cached per path and schema).
    async fn partitioned(
        &self,
        state: &dyn Session,
        store: &Arc<dyn object_store::ObjectStore>,
        f: SnapshotFile,
    ) -> Result<PartitionedFile> {
        let key = TableScopedPath {
            table: None,
            path: f.meta.location.clone(),
        };
        let cached = self.statistics.as_ref().and_then(|c| c.get(&key));
        let stats: Arc<Statistics> = match cached {
            Some(c) if c.is_valid_for(&f.meta, &self.fingerprint) => c.statistics.clone(),
            _ => {
                let stats = Arc::new(
                    self.format
                        .infer_stats(state, store, self.file_schema.clone(), &f.meta)
                        .await?,
                );
                if let Some(cache) = &self.statistics {
                    cache.put(
                        &key,
                        CachedFileMetadata::new(
                            f.meta.clone(),
                            self.fingerprint.clone(),
                            stats.clone(),
                            None,
                        ),
                    );
                }
                stats
            }
        };
        let mut file = PartitionedFile::from(f.meta);
        if self.partitioned {
            file.partition_values = vec![ScalarValue::Date32(f.date), ScalarValue::Int32(f.hour)];
        }
        Ok(file.with_statistics(stats))
    }
}

#[async_trait]
impl TableProvider for SnapshotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.partitioned && on_partitions(f) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let on_parts: Vec<Expr> = filters
            .iter()
            .filter(|f| on_partitions(f))
            .cloned()
            .collect();
        let picked = self.prune(state, &on_parts)?;
        if picked.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let store = state.runtime_env().object_store(&self.store_url)?;
        let concurrency = state
            .config_options()
            .execution
            .meta_fetch_concurrency
            .get();
        let files: Vec<PartitionedFile> = futures::stream::iter(picked)
            .map(|f| self.partitioned(state, &store, f))
            .buffered(concurrency)
            .try_collect()
            .await?;
        let groups = FileGroup::new(files).split_files(state.config().target_partitions());
        let (groups, statistics) = datafusion_datasource::compute_all_files_statistics(
            groups,
            self.schema.clone(),
            true,
            false,
        )?;
        let partition_cols = if self.partitioned {
            partition_fields()
        } else {
            Vec::new()
        };
        let table_schema = TableSchemaBuilder::from(&self.file_schema)
            .with_table_partition_cols(partition_cols)
            .build();
        let config = FileScanConfigBuilder::new(
            self.store_url.clone(),
            self.format.file_source(table_schema),
        )
        .with_file_groups(groups)
        .with_statistics(statistics)
        .with_projection_indices(projection.cloned())?
        .with_limit(limit)
        .build();
        self.format.create_physical_plan(state, config).await
    }
}

/// Whether `filter` reads only the partition columns (and reads at least one).
fn on_partitions(filter: &Expr) -> bool {
    !filter.column_refs().is_empty() && expr_applicable_for_cols(&PARTITION_COLUMNS, filter)
}
