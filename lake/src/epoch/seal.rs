//! Sealing: the completeness gate, the epoch files, the manifest (written last), proofs and diffs.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::compute::{SealMemory, compute, epoch_inputs};
use super::{EpochConfig, EpochError, manifest_path};
use crate::compact::table_hours;
use crate::rules::Rules;
use crate::{Lake, decode_parquet};
use hexpulse_rewards::merkle;
pub use hexpulse_rewards::proof::Proof;
use hexpulse_schemas::tables;

/// Where a partition's watermark is kept (written by the processor after each unit).
pub fn watermark_path(topic: &str, partition: i32) -> String {
    format!("_watermarks/{topic}/p{partition:04}.json")
}

/// A partition's published watermark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// The raw topic's partition.
    pub partition: i32,
    /// Every record with a receive time up to this (ms) is published, or will be rejected as late.
    pub watermark_ms: i64,
    /// The partition's chain end plus one when it was written.
    pub next_offset: i64,
}

/// One input range of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRange {
    /// The raw topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// The first raw-topic offset among the epoch's rows of this partition.
    pub first_offset: i64,
    /// The last one.
    pub last_offset: i64,
    /// The epoch's rows from this partition (valid and rejected).
    pub rows: u64,
}

/// One output file of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// The epoch table (`device_summary`, `hex_coverage`, `sensor_hex_hourly`, `road_hex`).
    pub table: String,
    /// The file's path under the lake root, named by its content.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// Its rows.
    pub rows: u64,
    /// SHA-256 of its bytes, hex: readers check it.
    pub sha256: String,
}

/// The manifest of a sealed epoch: written last, it is the seal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The epoch's id.
    pub epoch: i64,
    /// Its start, ms since the Unix epoch (included).
    pub start_ms: i64,
    /// Its end, ms (excluded).
    pub end_ms: i64,
    /// The start, RFC 3339.
    pub start: String,
    /// The end, RFC 3339.
    pub end: String,
    /// When it was sealed, RFC 3339 (the one field two seals of the same inputs differ in).
    pub sealed_at: String,
    /// Sealed by operator override before every watermark passed the end plus the lateness.
    pub forced: bool,
    /// The rules file's `version`.
    pub rules_version: String,
    /// SHA-256 of the rules file's text, hex.
    pub rules_hash: String,
    /// The rules' allowed lateness, ms.
    pub allowed_lateness_ms: i64,
    /// Partition watermarks (ms) when sealed; `None`: the partition had none.
    pub watermarks: BTreeMap<i32, Option<i64>>,
    /// The raw-topic offsets the epoch's rows came from, per partition.
    pub inputs: Vec<InputRange>,
    /// The Delta version of each input table the epoch was sealed from. A re-seal reads these
    /// versions, so rows that arrived later never change it. Empty in manifests sealed before the
    /// lake became Delta tables.
    #[serde(default)]
    pub input_versions: BTreeMap<String, i64>,
    /// Rejected rows of the epoch whose device could not be read (malformed records).
    pub unattributed_rejections: u64,
    /// The epoch tables' files.
    pub outputs: Vec<OutputFile>,
    /// The Merkle root over the device summaries, hex.
    pub merkle_root: String,
    /// The tree's leaves: one per device.
    pub merkle_leaves: u64,
    /// The leaf encoding's version ([`LEAF_ENCODING`]).
    pub leaf_encoding: String,
}

impl Manifest {
    /// The output file of `table`.
    pub fn output(&self, table: &str) -> Option<&OutputFile> {
        self.outputs.iter().find(|o| o.table == table)
    }
}

/// Names the leaf encoding in every manifest, by the version that schemas/EPOCHS.md specifies: a
/// verifier checks it against the versions it knows. A change of the encoding gets a new name.
pub use hexpulse_rewards::LEAF_ENCODING;

/// What to seal, from where, to where.
pub struct SealRequest<'a> {
    /// The lake holding the rows (and the watermarks).
    pub input: &'a Lake,
    /// Where the epoch folder and manifest go: the same lake, or another root for re-runs.
    pub output: &'a Lake,
    /// Epoch lengths and numbering.
    pub cfg: &'a EpochConfig,
    /// The rules the epoch is computed under.
    pub rules: &'a Rules,
    /// The epoch to seal.
    pub epoch: i64,
    /// Seal even though some partition's watermark has not passed the end plus the lateness.
    pub force: bool,
    /// The raw topic, whose partitions' watermarks say when the epoch is complete.
    pub topic: &'a str,
    /// Its partition count.
    pub partitions: i32,
}

/// What sealing an epoch found.
#[derive(Debug)]
pub enum Sealed {
    /// This call sealed it.
    New(Manifest),
    /// It was sealed already (possibly by a racing sealer); the existing manifest.
    Already(Manifest),
}

impl Sealed {
    /// The epoch's manifest, whoever sealed it.
    pub fn manifest(&self) -> &Manifest {
        match self {
            Sealed::New(m) | Sealed::Already(m) => m,
        }
    }
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}

/// The manifest of epoch `epoch` (`None`: not sealed).
pub async fn read_manifest(lake: &Lake, epoch: i64) -> Result<Option<Manifest>, EpochError> {
    let Some(bytes) = lake.get(&manifest_path(epoch)).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| EpochError::Invalid(format!("manifest of epoch {epoch}: {e}")))
}

/// The published watermark of every partition of `topic`.
pub async fn watermarks(
    lake: &Lake,
    topic: &str,
    partitions: i32,
) -> Result<BTreeMap<i32, Option<i64>>, EpochError> {
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        let wm = match lake.get(&watermark_path(topic, p)).await? {
            Some(b) => serde_json::from_slice::<Watermark>(&b)
                .ok()
                .map(|w| w.watermark_ms),
            None => None,
        };
        out.insert(p, wm);
    }
    Ok(out)
}

/// Seals one epoch: see the module docs of [`super`].
pub async fn seal(req: SealRequest<'_>) -> Result<Sealed, EpochError> {
    Ok(seal_measured(req).await?.0)
}

/// How a seal computed its epoch (see [`compute`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealStats {
    /// Device buckets the rows went through.
    pub buckets: usize,
    /// Bytes written to temporary files past the memory budget.
    pub spilled_bytes: u64,
}

/// [`seal`], and how it computed the epoch when this call computed it.
pub async fn seal_measured(
    req: SealRequest<'_>,
) -> Result<(Sealed, Option<SealStats>), EpochError> {
    if let Some(m) = read_manifest(req.output, req.epoch).await? {
        return Ok((Sealed::Already(m), None));
    }
    let (start, end) = req.cfg.bounds(req.epoch)?;
    // Not even forced: an epoch that has not ended would be sealed without the rest of its readings,
    // and its seal would then refuse them as late.
    let now = crate::now_ms();
    if end > now {
        return Err(EpochError::NotReady(format!(
            "epoch {} has not ended (it ends at {}); only an ended epoch can be sealed, forced or not",
            req.epoch,
            rfc3339(end)
        )));
    }
    let lateness = req.rules.time.allowed_lateness.as_millis() as i64;
    let wms = watermarks(req.input, req.topic, req.partitions).await?;
    let lagging: Vec<String> = wms
        .iter()
        .filter(|(_, w)| w.is_none_or(|w| w < end + lateness))
        .map(|(p, w)| match w {
            Some(w) => format!("p{p} at {}", rfc3339(*w)),
            None => format!("p{p} has no watermark"),
        })
        .collect();
    // A re-run (another output, e.g. other rules) of an epoch sealed in the input lake inherits its
    // seal: the gate was passed (or forced) then.
    let sealed_input = read_manifest(req.input, req.epoch).await?;
    let forced = match &sealed_input {
        Some(m) => m.forced,
        None => !lagging.is_empty(),
    };
    if sealed_input.is_none() && !lagging.is_empty() && !req.force {
        return Err(EpochError::NotReady(format!(
            "epoch {} is not complete: every partition's watermark must pass {} (end plus lateness); {}",
            req.epoch,
            rfc3339(end + lateness),
            lagging.join(", ")
        )));
    }
    // A re-seal of an epoch sealed in the input lake reads the versions that seal pinned.
    let pinned = sealed_input
        .as_ref()
        .map(|m| &m.input_versions)
        .filter(|v| !v.is_empty());
    let (files, input_versions) =
        epoch_inputs(req.input, req.cfg, req.rules, req.epoch, pinned).await?;
    let memory = SealMemory {
        bytes: req.cfg.seal_memory_bytes,
    };
    let computed = compute(req.input, req.cfg, req.rules, req.epoch, &files, memory).await?;
    tracing::debug!(
        epoch = req.epoch,
        files = files.len(),
        buckets = computed.buckets,
        spilled_bytes = computed.spilled_bytes,
        "epoch computed"
    );
    let t = &computed.tables;
    let stats = SealStats {
        buckets: computed.buckets,
        spilled_bytes: computed.spilled_bytes,
    };
    let mut outputs = Vec::new();
    // Every output names the rules it was computed under in its footer (also in the manifest).
    for (table, encoded) in [
        (tables::DEVICE_SUMMARY_TABLE, &t.device_summary),
        ("hex_coverage", &t.hex_coverage),
        ("sensor_hex_hourly", &t.sensor_hex_hourly),
        ("road_hex", &t.road_hex),
    ] {
        let bytes = encoded.bytes.clone();
        let sha256 = hex::encode(Sha256::digest(&bytes));
        // Named by content: a racing sealer that read other versions writes another file, and
        // never replaces the bytes that a winning manifest lists.
        let path = super::publish::output_path(table, req.epoch, &sha256);
        let entry = OutputFile {
            table: table.to_string(),
            path: path.clone(),
            bytes: bytes.len() as u64,
            rows: encoded.rows,
            sha256,
        };
        req.output.put(&path, bytes).await?;
        outputs.push(entry);
    }
    let manifest = Manifest {
        epoch: req.epoch,
        start_ms: start,
        end_ms: end,
        start: rfc3339(start),
        end: rfc3339(end),
        sealed_at: rfc3339(crate::now_ms()),
        forced,
        rules_version: req.rules.version.clone(),
        rules_hash: req.rules.hash.clone(),
        allowed_lateness_ms: lateness,
        watermarks: wms,
        inputs: computed
            .inputs
            .iter()
            .map(|((topic, partition), (first, last, n))| InputRange {
                topic: topic.clone(),
                partition: *partition,
                first_offset: *first,
                last_offset: *last,
                rows: *n,
            })
            .collect(),
        input_versions,
        unattributed_rejections: computed.unattributed_rejections,
        outputs,
        merkle_root: hex::encode(merkle::root(&t.leaves)),
        merkle_leaves: t.leaves.len() as u64,
        leaf_encoding: LEAF_ENCODING.into(),
    };
    let body = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    match req
        .output
        .put_if_absent(&manifest_path(req.epoch), body)
        .await
    {
        Ok(true) => {
            tracing::info!(
                epoch = req.epoch,
                forced = manifest.forced,
                devices = manifest.merkle_leaves,
                root = %manifest.merkle_root,
                "epoch sealed"
            );
            Ok((Sealed::New(manifest), Some(stats)))
        }
        Ok(false) => {
            let winner = read_manifest(req.output, req.epoch)
                .await?
                .ok_or_else(|| EpochError::Invalid("manifest vanished".into()))?;
            // Another sealer won the race. The outputs it did not list are this attempt's own
            // (computed from other input versions): nothing will ever read them.
            for o in &manifest.outputs {
                if winner.output(&o.table).is_none_or(|w| w.path != o.path) {
                    req.output.delete(&o.path).await?;
                }
            }
            tracing::info!(
                epoch = req.epoch,
                "another sealer sealed this epoch first; its manifest stands"
            );
            Ok((Sealed::Already(winner), Some(stats)))
        }
        Err(e) => Err(EpochError::Lake(e)),
    }
}

/// Reads a manifest-listed output and checks its SHA-256 against the manifest.
pub async fn read_output(
    lake: &Lake,
    manifest: &Manifest,
    table: &str,
) -> Result<RecordBatch, EpochError> {
    let out = manifest
        .output(table)
        .ok_or_else(|| EpochError::Invalid(format!("manifest lists no {table}")))?;
    let bytes = lake
        .get(&out.path)
        .await?
        .ok_or_else(|| EpochError::Invalid(format!("{} is missing", out.path)))?;
    let sha = hex::encode(Sha256::digest(&bytes));
    if sha != out.sha256 {
        return Err(EpochError::Invalid(format!(
            "{} has SHA-256 {sha}, the manifest says {}",
            out.path, out.sha256
        )));
    }
    let batches = decode_parquet(bytes, None)?;
    let schema = batches
        .first()
        .map(|b| b.schema())
        .unwrap_or_else(|| match table {
            tables::DEVICE_SUMMARY_TABLE => tables::device_summary_schema(),
            "hex_coverage" => tables::hex_coverage_schema(),
            "sensor_hex_hourly" => tables::sensor_hex_hourly_schema(),
            _ => tables::road_hex_schema(),
        });
    Ok(arrow::compute::concat_batches(&schema, &batches)?)
}

/// Builds the proof of `device_key` in sealed epoch `epoch`, checking the file against the manifest
/// (SHA-256 and root) first.
pub async fn build_proof(lake: &Lake, epoch: i64, device_key: &str) -> Result<Proof, EpochError> {
    let m = read_manifest(lake, epoch)
        .await?
        .ok_or_else(|| EpochError::Invalid(format!("epoch {epoch} is not sealed")))?;
    let batch = read_output(lake, &m, tables::DEVICE_SUMMARY_TABLE).await?;
    Ok(Proof::build(&batch, epoch, device_key, &m.merkle_root)?)
}

/// A per-device difference between two results of the same epoch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceDelta {
    /// The device's public key, hex.
    pub device_key: String,
    /// Its points in the first result (`None`: not there).
    pub points_a: Option<u64>,
    /// Its points in the second.
    pub points_b: Option<u64>,
    /// Columns whose values differ (besides the rules columns), as (column, a, b).
    pub changed: Vec<(String, Value, Value)>,
}

/// Compares the device summaries of epoch `epoch` in two lakes (e.g. the sealed one and a re-run).
pub async fn diff(a: &Lake, b: &Lake, epoch: i64) -> Result<Vec<DeviceDelta>, EpochError> {
    let load = |lake: &Lake| {
        let lake = lake.clone();
        async move {
            let m = read_manifest(&lake, epoch)
                .await?
                .ok_or_else(|| EpochError::Invalid(format!("epoch {epoch} is not sealed there")))?;
            let batch = read_output(&lake, &m, tables::DEVICE_SUMMARY_TABLE).await?;
            let mut rows = BTreeMap::new();
            for i in 0..batch.num_rows() {
                let r = merkle::row_json(&batch, i);
                let key = r["device_key"].as_str().unwrap_or_default().to_string();
                rows.insert(key, r);
            }
            Ok::<_, EpochError>(rows)
        }
    };
    let (ra, rb) = (load(a).await?, load(b).await?);
    let keys: std::collections::BTreeSet<&String> = ra.keys().chain(rb.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        let (x, y) = (ra.get(k), rb.get(k));
        let points = |r: Option<&Map<String, Value>>| r.and_then(|r| r["reward_points"].as_u64());
        let mut changed = Vec::new();
        if let (Some(x), Some(y)) = (x, y) {
            for (col, vx) in x {
                if col == "rules_version" || col == "rules_hash" {
                    continue;
                }
                let vy = y.get(col).cloned().unwrap_or(Value::Null);
                if *vx != vy {
                    changed.push((col.clone(), vx.clone(), vy));
                }
            }
        }
        if x.is_none() || y.is_none() || !changed.is_empty() {
            out.push(DeviceDelta {
                device_key: k.clone(),
                points_a: points(x),
                points_b: points(y),
                changed,
            });
        }
    }
    Ok(out)
}

/// The first epoch the sealer should look at: after the last sealed one, or the earliest with data.
pub async fn next_epoch(lake: &Lake, cfg: &EpochConfig) -> Result<Option<i64>, EpochError> {
    if let Some(last) = super::sealed_ids(lake).await?.last() {
        return Ok(Some(last + 1));
    }
    let mut earliest: Option<(String, u32)> = None;
    for kind in hexpulse_schemas::wire::KindName::ALL {
        if let Some(h) = table_hours(lake, kind.as_str()).await?.into_iter().next() {
            earliest = Some(earliest.map_or(h.clone(), |e| e.min(h)));
        }
    }
    let Some((date, hour)) = earliest else {
        return Ok(None);
    };
    let t = humantime::parse_rfc3339(&format!("{date}T{hour:02}:00:00Z"))
        .map_err(|e| EpochError::Invalid(format!("hour folder {date}/{hour}: {e}")))?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Ok(Some(cfg.id_of(ms)?))
}

/// The epochs a sealer should try now, in order: from the first after the last sealed one (or the
/// earliest with data) while the epoch's end plus the allowed lateness has passed. `None`: the lake
/// has no data yet.
pub async fn due_epochs(
    lake: &Lake,
    cfg: &EpochConfig,
    rules: &Rules,
) -> Result<Option<Vec<i64>>, EpochError> {
    let Some(first) = next_epoch(lake, cfg).await? else {
        return Ok(None);
    };
    let lateness = rules.time.allowed_lateness.as_millis() as i64;
    let now = crate::now_ms();
    Ok(Some(
        (first..)
            .take_while(|e| cfg.bounds(*e).is_ok_and(|(_, end)| end + lateness <= now))
            .collect(),
    ))
}

/// [`seal`], then the outputs published in the epoch tables (see [`super::publish`]).
pub async fn seal_and_publish(req: SealRequest<'_>) -> Result<Sealed, EpochError> {
    let out = req.output;
    let sealed = seal(req).await?;
    super::publish::publish(out, sealed.manifest()).await?;
    Ok(sealed)
}
