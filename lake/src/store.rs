//! The lake's object store: opening a lake URL, plain object access, and our Parquet encoding.
//!
//! Every table under the lake root is a Delta table (see [`crate::delta`]); this module knows
//! nothing of their logs. It also holds what lives next to the tables: watermarks and epoch outputs.

use std::sync::Arc;

use arrow::array::RecordBatch;
use bytes::Bytes;
use futures::TryStreamExt;
use hexpulse_common::fault::{Classify, Fault};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

/// An error of the lake ([`Classify`] says whose fault and whether to retry).
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// The object store failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// A Parquet file did not encode or decode.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// delta-rs failed (reading a log, a snapshot, a checkpoint).
    #[error("delta: {0}")]
    Delta(#[from] deltalake::DeltaTableError),
    /// Arrow arrays did not fit a schema.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The lake URL names no store this build can open.
    #[error("lake URL {url:?}: {message}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// Other writers won this many commit races in a row: a later try may win.
    #[error("{table}: lost {races} commit races in a row")]
    Contended {
        /// The table.
        table: String,
        /// The races lost.
        races: i64,
    },
    /// An object of the lake does not hold what its name promises.
    #[error("{path}: {message}")]
    Corrupt {
        /// The object.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

impl Classify for LakeError {
    /// Retrying helps with what a store or the network does now and may not do later; it does not
    /// help with a configuration the operator must change, nor with data we encode or decode
    /// wrongly. Delta errors are retried unless their store error is permanent: delta-rs wraps
    /// passing read failures in many of its variants.
    fn fault(&self) -> Fault {
        match self {
            LakeError::Store(e) => object_store_fault(e),
            LakeError::Delta(deltalake::DeltaTableError::ObjectStore { source }) => {
                object_store_fault(source)
            }
            LakeError::Delta(_) | LakeError::Contended { .. } => Fault::External,
            LakeError::Parquet(parquet::errors::ParquetError::External(_)) => Fault::External,
            LakeError::Parquet(_) | LakeError::Arrow(_) | LakeError::Corrupt { .. } => {
                Fault::Internal
            }
            LakeError::Url { .. } => Fault::User,
        }
    }
}

/// The fault of an object store error: permissions, credentials, paths and configuration are the
/// operator's to fix; everything else (a network error, a throttled request, an object that a
/// concurrent writer moved) may pass.
pub fn object_store_fault(e: &object_store::Error) -> Fault {
    use object_store::Error as E;
    match e {
        E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. } => Fault::User,
        _ => Fault::External,
    }
}

/// A lake: an object store rooted at the lake's root, plus what the Delta tables need to address
/// the same objects (the store at the root of its bucket or file system, and the root's URL).
#[derive(Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    /// The store that `base`'s path is relative to (a bucket, or `/` of the local file system).
    root: Arc<dyn ObjectStore>,
    /// URL of the lake root, ending in `/`.
    base: url::Url,
    pub(crate) tables: Arc<crate::delta::Tables>,
}

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lake")
            .field("base", &self.base.as_str())
            .finish()
    }
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
            let (root, prefix) =
                object_store::parse_url_opts(&parsed, opts).map_err(|e| err(e.to_string()))?;
            let root: Arc<dyn ObjectStore> = Arc::from(root);
            let store: Arc<dyn ObjectStore> =
                Arc::new(object_store::prefix::PrefixStore::new(root.clone(), prefix));
            let mut base = parsed.clone();
            if !base.path().ends_with('/') {
                base.set_path(&format!("{}/", base.path()));
            }
            return Ok(Lake::with_roots(store, root, base));
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        std::fs::create_dir_all(path).map_err(|e| err(e.to_string()))?;
        let abs = std::fs::canonicalize(path).map_err(|e| err(e.to_string()))?;
        let store = LocalFileSystem::new_with_prefix(&abs).map_err(|e| err(e.to_string()))?;
        let base = url::Url::from_directory_path(&abs)
            .map_err(|()| err("not an absolute directory".into()))?;
        Ok(Lake::with_roots(
            Arc::new(store),
            Arc::new(LocalFileSystem::new()),
            base,
        ))
    }

    /// A lake over any store rooted at the lake root (tests inject failing stores over local
    /// directories). The Delta tables address it as `memory:///`, through a wrapper that sorts its
    /// listings (see [`crate::sorted`]).
    pub fn from_store(store: Arc<dyn ObjectStore>) -> Lake {
        let base = url::Url::parse("memory:///").expect("static URL");
        let root = Arc::new(crate::sorted::SortedListing(store.clone()));
        Lake::with_roots(store, root, base)
    }

    fn with_roots(store: Arc<dyn ObjectStore>, root: Arc<dyn ObjectStore>, base: url::Url) -> Lake {
        Lake {
            store,
            root,
            base,
            tables: Arc::default(),
        }
    }

    /// The object store, rooted at the lake root.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The store at the root of the lake's bucket or file system, and the lake root's URL.
    pub(crate) fn roots(&self) -> (&Arc<dyn ObjectStore>, &url::Url) {
        (&self.root, &self.base)
    }

    /// The URL of an object of the lake (for outside readers: DuckDB, Spark).
    pub fn url_of(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Writes the object `path` (under the lake root), replacing any.
    pub async fn put(&self, path: &str, bytes: Bytes) -> Result<(), LakeError> {
        self.store
            .put(&Path::from(path), PutPayload::from_bytes(bytes))
            .await?;
        Ok(())
    }

    /// The object `path` (`None`: there is none).
    pub async fn get(&self, path: &str) -> Result<Option<Bytes>, LakeError> {
        match self.store.get(&Path::from(path)).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the object `path` exists.
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
    let mut w = ParquetStream::new(batch.schema(), level, metadata)?;
    w.write(batch)?;
    w.finish()
}

/// A Parquet file written batch by batch into memory, with the settings of [`encode_parquet`].
/// Batches whose lengths are multiples of 1,024 (the writer's step) give the same bytes as one
/// batch of all their rows.
pub struct ParquetStream {
    writer: ArrowWriter<Vec<u8>>,
    rows: u64,
}

impl ParquetStream {
    /// A file of `schema`, zstd at `level`, with `metadata` in its footer.
    pub fn new(
        schema: arrow::datatypes::SchemaRef,
        level: i32,
        metadata: Vec<(String, String)>,
    ) -> Result<ParquetStream, LakeError> {
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
        Ok(ParquetStream {
            writer: ArrowWriter::try_new(Vec::new(), schema, Some(props))?,
            rows: 0,
        })
    }

    /// Encodes `batch` into the file.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), LakeError> {
        self.rows += batch.num_rows() as u64;
        Ok(self.writer.write(batch)?)
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The file's bytes, footer included.
    pub fn finish(self) -> Result<Bytes, LakeError> {
        Ok(self.writer.into_inner()?.into())
    }
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

/// An hour in milliseconds: the lake's partitions and compaction run by the hour (UTC).
pub const HOUR_MS: i64 = 3_600_000;

/// Hours (as (date, hour)) of a time, UTC.
pub fn date_hour(ms: i64) -> (String, u32) {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let hour = (secs.rem_euclid(86_400) / 3600) as u32;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    (format!("{y:04}-{mo:02}-{d:02}"), hour)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_hour_is_utc_civil_time() {
        assert_eq!(date_hour(0), ("1970-01-01".into(), 0));
        assert_eq!(date_hour(1_767_225_600_000), ("2026-01-01".into(), 0));
        assert_eq!(
            date_hour(1_709_164_800_000 + 13 * 3_600_000),
            ("2024-02-29".into(), 13)
        );
        assert_eq!(date_hour(-1), ("1969-12-31".into(), 23));
    }

    #[test]
    fn only_errors_that_may_pass_are_retried() {
        let store = |e: object_store::Error| LakeError::Store(e);
        let denied = store(object_store::Error::PermissionDenied {
            path: "p".into(),
            source: "no".into(),
        });
        assert_eq!(denied.fault(), Fault::User);
        assert!(!denied.retryable());
        let network = store(object_store::Error::Generic {
            store: "s3",
            source: "connection reset".into(),
        });
        assert!(network.retryable());
        let contended = LakeError::Contended {
            table: "heartbeat".into(),
            races: 256,
        };
        assert!(contended.retryable());
        let corrupt = LakeError::Corrupt {
            path: "heartbeat/_delta_log/00000000000000000001.json".into(),
            message: "not JSON".into(),
        };
        assert_eq!(corrupt.fault(), Fault::Internal);
        assert!(!corrupt.retryable());
        let wrapped = LakeError::Delta(deltalake::DeltaTableError::ObjectStore {
            source: object_store::Error::Unauthenticated {
                path: "p".into(),
                source: "expired".into(),
            },
        });
        assert!(
            !wrapped.retryable(),
            "a permanent store error inside delta-rs's"
        );
    }
}
