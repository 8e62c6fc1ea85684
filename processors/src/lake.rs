//! The Parquet lake on an object store: paths, Parquet encoding, claims and publication.
//!
//! Layout under the lake root:
//! ```text
//! {table}/date=YYYY-MM-DD/hour=HH/{topic}-p{partition}-{start}-{end}.parquet   published data
//! _staging/{topic}/p{partition}/{start}-{end}-{writer}/{table}-{date}-{hour}.parquet   written first, then moved
//! _claims/{topic}/p{partition}/{start}.json                                         one per unit
//! {table}/date=YYYY-MM-DD/hour=HH/compacted-{gen}-{i}-{hash}.parquet              merged (compact.rs)
//! _compaction/{table}/date=YYYY-MM-DD/hour=HH/{gen}.json                           compaction records
//! ```
//! See `ARCHITECTURE.md`, "Exactly-once rows", for why this order makes every (partition, offset)
//! appear at most once among published files, and at least once after recovery.

use std::sync::Arc;

use arrow::array::RecordBatch;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("lake URL {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("claim {path}: {message}")]
    BadClaim { path: String, message: String },
}

/// One file of a unit: where it was staged and where it is published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedFile {
    pub table: String,
    pub staging: String,
    pub published: String,
    pub rows: u64,
    pub bytes: u64,
}

/// The claim of a unit: offsets `[start, end]` of one partition, and the files holding their rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    pub end: i64,
    pub writer: String,
    pub files: Vec<ClaimedFile>,
}

/// A lake: an object store plus a root prefix.
#[derive(Clone, Debug)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
}

impl Lake {
    /// A lake at `url`: a local directory (plain path or `file://`), or any URL object_store knows
    /// (`s3://bucket/prefix`, `gs://...`, `az://...`), configured from the environment.
    pub fn open(url: &str) -> Result<Lake, LakeError> {
        let err = |message: String| LakeError::Url {
            url: url.to_string(),
            message,
        };
        if url.contains("://") && !url.starts_with("file://") {
            let parsed = url::Url::parse(url).map_err(|e| err(e.to_string()))?;
            let opts: Vec<(String, String)> = std::env::vars()
                .filter(|(k, _)| {
                    k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
                })
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            let (store, prefix) =
                object_store::parse_url_opts(&parsed, opts).map_err(|e| err(e.to_string()))?;
            let store: Arc<dyn ObjectStore> =
                Arc::new(object_store::prefix::PrefixStore::new(store, prefix));
            return Ok(Lake { store });
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        std::fs::create_dir_all(path).map_err(|e| err(e.to_string()))?;
        let store = LocalFileSystem::new_with_prefix(path).map_err(|e| err(e.to_string()))?;
        Ok(Lake {
            store: Arc::new(store),
        })
    }

    /// A lake over any store (tests inject failing or in-memory stores).
    pub fn from_store(store: Arc<dyn ObjectStore>) -> Lake {
        Lake { store }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn published_path(
        table: &str,
        date: &str,
        hour: u32,
        topic: &str,
        partition: i32,
        start: i64,
        end: i64,
    ) -> String {
        format!(
            "{table}/date={date}/hour={hour:02}/{topic}-p{partition:04}-{start:020}-{end:020}.parquet"
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn staging_path(
        topic: &str,
        partition: i32,
        start: i64,
        end: i64,
        writer: &str,
        table: &str,
        date: &str,
        hour: u32,
    ) -> String {
        format!(
            "_staging/{topic}/p{partition:04}/{start:020}-{end:020}-{writer}/{table}-{date}-{hour:02}.parquet"
        )
    }

    pub fn claim_path(topic: &str, partition: i32, start: i64) -> String {
        format!("_claims/{topic}/p{partition:04}/{start:020}.json")
    }

    pub async fn put(&self, path: &str, bytes: Bytes) -> Result<(), LakeError> {
        self.store
            .put(&Path::from(path), PutPayload::from_bytes(bytes))
            .await?;
        Ok(())
    }

    pub async fn get(&self, path: &str) -> Result<Option<Bytes>, LakeError> {
        match self.store.get(&Path::from(path)).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn exists(&self, path: &str) -> Result<bool, LakeError> {
        match self.store.head(&Path::from(path)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `bytes` at `path` only if nothing is there (`O_EXCL` on a local disk, a conditional PUT
    /// on S3): the commit point of claims, compaction records and epoch manifests. `Ok(false)`: an
    /// object was there already (another writer won).
    pub async fn put_if_absent(&self, path: &str, bytes: Vec<u8>) -> Result<bool, LakeError> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&Path::from(path), PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the claim if no claim for its start exists. `Ok(false)`: another writer holds it.
    pub async fn create_claim(&self, claim: &Claim) -> Result<bool, LakeError> {
        let path = Self::claim_path(&claim.topic, claim.partition, claim.start);
        let body = serde_json::to_vec_pretty(claim).expect("claim serialises");
        self.put_if_absent(&path, body).await
    }

    pub async fn get_claim(
        &self,
        topic: &str,
        partition: i32,
        start: i64,
    ) -> Result<Option<Claim>, LakeError> {
        let path = Self::claim_path(topic, partition, start);
        let Some(bytes) = self.get(&path).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| LakeError::BadClaim {
                path,
                message: e.to_string(),
            })
    }

    /// Makes every file of `claim` visible at its published path by moving it out of staging.
    /// Idempotent: a file already published is left alone, and a concurrent publisher that moved it
    /// first is not an error.
    pub async fn publish(&self, claim: &Claim) -> Result<(), LakeError> {
        for f in &claim.files {
            if self.exists(&f.published).await? {
                continue;
            }
            let moved = self
                .store
                .rename(
                    &Path::from(f.staging.as_str()),
                    &Path::from(f.published.as_str()),
                )
                .await;
            match moved {
                Ok(()) => {}
                // Moved by a concurrent publisher, or moved and later merged away by compaction.
                Err(object_store::Error::NotFound { .. })
                    if self.exists(&f.published).await?
                        || crate::compact::was_compacted(self, &f.published).await? => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Paths of objects under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, LakeError> {
        let items: Vec<_> = self
            .store
            .list(Some(&Path::from(prefix)))
            .try_collect()
            .await?;
        Ok(items.into_iter().map(|m| m.location.to_string()).collect())
    }

    /// Rows of a Parquet file, from its footer.
    pub async fn row_count(&self, path: &str) -> Result<u64, LakeError> {
        let bytes = self.get(path).await?.unwrap_or_default();
        let meta =
            parquet::file::metadata::ParquetMetaDataReader::new().parse_and_finish(&bytes)?;
        Ok(meta.file_metadata().num_rows() as u64)
    }

    /// Paths, sizes and modification times (ms since the epoch) of objects under `prefix`.
    pub async fn list_meta(&self, prefix: &str) -> Result<Vec<(String, u64, i64)>, LakeError> {
        let items: Vec<_> = self
            .store
            .list(Some(&Path::from(prefix)))
            .try_collect()
            .await?;
        Ok(items
            .into_iter()
            .map(|m| {
                (
                    m.location.to_string(),
                    m.size,
                    m.last_modified.timestamp_millis(),
                )
            })
            .collect())
    }

    /// Deletes an object, ignoring a missing one.
    pub async fn delete(&self, path: &str) -> Result<(), LakeError> {
        match self.store.delete(&Path::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// zstd level of the files the processors write every second: the fastest, since they are short-lived.
pub const UNIT_ZSTD_LEVEL: i32 = 1;
/// zstd level of merged files, which live as long as the lake: smaller at some CPU cost.
pub const COMPACTED_ZSTD_LEVEL: i32 = 6;

/// Rows per data page (at most; the writer checks every 1,024 rows).
pub const PAGE_ROWS: usize = 2048;

/// Parquet bytes of `batch`: zstd at `level`, page-level statistics (column and offset indexes on).
pub fn encode_parquet(batch: &RecordBatch, level: i32) -> Result<Bytes, LakeError> {
    encode_parquet_with(batch, level, Vec::new())
}

/// [`encode_parquet`], with key-value metadata in the file footer.
pub fn encode_parquet_with(
    batch: &RecordBatch,
    level: i32,
    metadata: Vec<(String, String)>,
) -> Result<Bytes, LakeError> {
    let mut props = WriterProperties::builder();
    for col in [
        "device_key",
        "radio",
        "metric",
        "unit",
        "observation",
        "src_topic",
        "rules_version",
        "kind",
        "reason",
        "speed_tier",
        "rules_hash",
    ] {
        props = props.set_column_dictionary_enabled(ColumnPath::from(col), true);
    }
    let props = props
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(level)?))
        .set_statistics_enabled(EnabledStatistics::Page)
        // Dictionaries only where values repeat (keys, enums, provenance); numbers, times, cells,
        // messages and raw bytes are near-unique, and building their dictionaries costs CPU for nothing.
        .set_dictionary_enabled(false)
        .set_max_row_group_row_count(Some(128 * 1024))
        // Small pages: files are sorted by cell, so a reader using the page index (the query
        // service) decodes only the pages of the cells, places and times it asks for.
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_key_value_metadata((!metadata.is_empty()).then(|| {
            metadata
                .into_iter()
                .map(|(k, v)| parquet::file::metadata::KeyValue::new(k, v))
                .collect()
        }))
        .build();
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 4 + 1024);
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    w.write(batch)?;
    w.close()?;
    Ok(buf.into())
}

/// The column `name` of a batch read with [`decode_parquet`] projected to include it.
///
/// # Panics
/// When the batch has no such column (a projection bug, not a data error).
pub fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a arrow::array::ArrayRef {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("projected column {name} missing"))
}

/// Record batches of a Parquet file, optionally projected to `columns`.
pub fn decode_parquet(
    bytes: Bytes,
    columns: Option<&[&str]>,
) -> Result<Vec<RecordBatch>, LakeError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    let builder = match columns {
        Some(cols) => {
            let schema = builder.parquet_schema();
            let idx: Vec<usize> = schema
                .columns()
                .iter()
                .enumerate()
                .filter(|(_, c)| cols.contains(&c.name()))
                .map(|(i, _)| i)
                .collect();
            let mask = parquet::arrow::ProjectionMask::leaves(schema, idx);
            builder.with_projection(mask)
        }
        None => builder,
    };
    Ok(builder.build()?.collect::<Result<Vec<_>, _>>()?)
}
