//! Epochs: fixed-length time windows sealed into deterministic, verifiable reward inputs.
//!
//! The reward formula, the Merkle tree and proofs are pure logic in `hexpulse_rewards`; this module
//! reads their inputs from the lake and writes their outputs.
//!
//! - [`compute`]: reading an epoch's rows from the lake and aggregating them (pure and sorted, so the
//!   same rows give the same bytes whatever the files or partitions they came in);
//! - [`seal`]: the completeness gate, the files and the manifest, the sealer loop;
//! - [`publish`]: the sealed outputs as Delta tables.
//!
//! Layout: `epochs/{device_summary,hex_coverage,sensor_hex_hourly,road_hex}/epoch={id:06}-{sha256[..16]}.parquet`
//! (the Delta tables' data files, published after the seal) and `epochs/epoch={id:06}/manifest.json`,
//! written after the files with create-if-absent: the manifest is the seal.

pub mod compute;
pub mod publish;
pub mod seal;
mod spill;

use std::collections::BTreeSet;
use std::sync::RwLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Lake, LakeError};

/// The `[process.epoch]` config section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EpochConfig {
    /// Length of an epoch (a day in production, minutes for demos).
    #[serde(with = "humantime_serde")]
    pub length: Duration,
    /// Start of epoch 0, RFC 3339 UTC.
    pub origin: String,
    /// H3 resolution of the epoch tables (a column `h3_r{res}` the processors write).
    pub hex_resolution: u8,
    /// How often `hexpulse process` tries to seal the next epoch ("0s": never; `hexpulse seal` does it).
    #[serde(with = "humantime_serde")]
    pub seal_interval: Duration,
    /// A partition that received nothing for this long has its watermark advanced to now minus this
    /// (so an idle partition does not hold every seal back).
    #[serde(with = "humantime_serde")]
    pub idle_after: Duration,
    /// Memory one seal may use (bytes): past it, the epoch's rows wait in temporary files
    /// (`compute::SealMemory`).
    pub seal_memory_bytes: u64,
}

impl Default for EpochConfig {
    fn default() -> Self {
        EpochConfig {
            length: Duration::from_secs(86_400),
            origin: "2026-01-01T00:00:00Z".into(),
            hex_resolution: 8,
            seal_interval: Duration::from_secs(30),
            idle_after: Duration::from_secs(30),
            seal_memory_bytes: 512 << 20,
        }
    }
}

/// An error of epochs: computing, sealing, publishing, proving.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    /// The epoch configuration is invalid.
    #[error("epoch config: {0}")]
    Config(String),
    /// The lake failed.
    #[error("lake: {0}")]
    Lake(#[from] LakeError),
    /// Arrow arrays did not fit a schema.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The epoch is not complete yet (a watermark is behind): a later round may seal it.
    #[error("{0}")]
    NotReady(String),
    /// A request or a stored file is invalid (an unknown device, a proof that does not verify,
    /// an epoch of another length).
    #[error("{0}")]
    Invalid(String),
}

impl hexpulse_common::fault::Classify for EpochError {
    fn fault(&self) -> hexpulse_common::fault::Fault {
        use hexpulse_common::fault::Fault;
        match self {
            EpochError::Config(_) | EpochError::Invalid(_) => Fault::User,
            EpochError::Lake(e) => e.fault(),
            EpochError::Arrow(_) => Fault::Internal,
            // Not complete yet: a later round may seal it.
            EpochError::NotReady(_) => Fault::External,
        }
    }
}

impl From<hexpulse_rewards::Invalid> for EpochError {
    fn from(e: hexpulse_rewards::Invalid) -> EpochError {
        EpochError::Invalid(e.0)
    }
}

impl EpochConfig {
    /// The start of epoch 0, ms since the Unix epoch.
    pub fn origin_ms(&self) -> Result<i64, EpochError> {
        let t = humantime::parse_rfc3339(&self.origin)
            .map_err(|e| EpochError::Config(format!("origin {:?}: {e}", self.origin)))?;
        Ok(t.duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| EpochError::Config("origin before 1970".into()))?
            .as_millis() as i64)
    }

    /// An epoch's length, ms (at least a second).
    pub fn length_ms(&self) -> Result<i64, EpochError> {
        let ms = self.length.as_millis() as i64;
        if ms < 1000 {
            return Err(EpochError::Config("length must be at least 1s".into()));
        }
        Ok(ms)
    }

    /// The epoch holding time `ms`.
    pub fn id_of(&self, ms: i64) -> Result<i64, EpochError> {
        let since = ms
            .checked_sub(self.origin_ms()?)
            .ok_or_else(|| EpochError::Invalid(format!("time {ms} ms is out of range")))?;
        Ok(since.div_euclid(self.length_ms()?))
    }

    /// `[start, end)` of epoch `id`, ms; an id whose bounds do not fit in i64 ms is `Invalid`.
    pub fn bounds(&self, id: i64) -> Result<(i64, i64), EpochError> {
        let length = self.length_ms()?;
        id.checked_mul(length)
            .and_then(|o| o.checked_add(self.origin_ms().ok()?))
            .and_then(|start| Some((start, start.checked_add(length)?)))
            .ok_or_else(|| EpochError::Invalid(format!("epoch {id} is out of range")))
    }
}

/// The folder of epoch `id`'s manifest.
pub fn epoch_dir(id: i64) -> String {
    format!("epochs/epoch={id:06}/")
}

/// The manifest path of epoch `id`.
pub fn manifest_path(id: i64) -> String {
    format!("{}manifest.json", epoch_dir(id))
}

/// Ids of the sealed epochs (those with a manifest).
pub async fn sealed_ids(lake: &Lake) -> Result<BTreeSet<i64>, LakeError> {
    Ok(lake
        .list("epochs/")
        .await?
        .iter()
        .filter(|p| p.ends_with("/manifest.json"))
        .filter_map(|p| {
            p.strip_prefix("epochs/epoch=")?
                .split('/')
                .next()?
                .parse()
                .ok()
        })
        .collect())
}

/// The sealed epochs as the validator sees them: readings of a sealed epoch are `late`.
#[derive(Debug)]
pub struct SealedEpochs {
    cfg: EpochConfig,
    ids: RwLock<BTreeSet<i64>>,
}

impl SealedEpochs {
    /// None sealed yet, for epochs of `cfg`.
    pub fn new(cfg: EpochConfig) -> Result<SealedEpochs, EpochError> {
        cfg.length_ms()?;
        cfg.origin_ms()?;
        Ok(SealedEpochs {
            cfg,
            ids: RwLock::new(BTreeSet::new()),
        })
    }

    /// The sealed epoch holding time `ms`, if it is sealed.
    pub fn sealed_epoch_of(&self, ms: i64) -> Option<i64> {
        let id = self.cfg.id_of(ms).ok()?;
        self.ids.read().expect("lock").contains(&id).then_some(id)
    }

    /// Marks epoch `id` sealed.
    pub fn mark(&self, id: i64) {
        self.ids.write().expect("lock").insert(id);
    }

    /// Re-reads the sealed ids from the lake.
    pub async fn refresh(&self, lake: &Lake) -> Result<(), LakeError> {
        let ids = sealed_ids(lake).await?;
        *self.ids.write().expect("lock") = ids;
        Ok(())
    }
}

/// The median of `v` (sorted in place); the mean of the two middle values for an even count.
pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_bounds() {
        let cfg = EpochConfig {
            length: Duration::from_secs(600),
            origin: "2026-11-22T00:00:00Z".into(),
            ..EpochConfig::default()
        };
        let o = cfg.origin_ms().unwrap();
        assert_eq!(cfg.id_of(o).unwrap(), 0);
        assert_eq!(cfg.id_of(o + 599_999).unwrap(), 0);
        assert_eq!(cfg.id_of(o + 600_000).unwrap(), 1);
        assert_eq!(cfg.id_of(o - 1).unwrap(), -1);
        assert_eq!(cfg.bounds(3).unwrap(), (o + 1_800_000, o + 2_400_000));
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }
}
