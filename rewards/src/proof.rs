//! A device's inclusion proof in a sealed epoch, and its check. `schemas/EPOCHS.md` specifies the
//! JSON form; `GET /v1/epochs/{id}/proof/{device}` and `hexpulse epoch proof` give it.

use arrow::array::{AsArray, RecordBatch};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Invalid;
use crate::merkle::{self, Step};

/// A Merkle inclusion proof of one device's summary row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proof {
    /// The epoch's id.
    pub epoch: i64,
    /// The device's public key, hex.
    pub device_key: String,
    /// The row's index in the epoch's `device_summary` file (sorted by `device_key`).
    pub index: u64,
    /// How many leaves (device summaries) the tree has.
    pub leaves: u64,
    /// The device's summary row, a member per column.
    pub row: Map<String, Value>,
    /// The row's leaf hash, hex.
    pub leaf: String,
    /// The siblings from the leaf up to the root.
    pub path: Vec<Step>,
    /// The root the path leads to, hex (the manifest's `merkle_root`).
    pub root: String,
}

impl Proof {
    /// The proof of `device_key` among the rows of an epoch's `device_summary` file, after checking
    /// that the rows give `expected_root` (the manifest's).
    pub fn build(
        summary: &RecordBatch,
        epoch: i64,
        device_key: &str,
        expected_root: &str,
    ) -> Result<Proof, Invalid> {
        let leaves = (0..summary.num_rows())
            .map(|i| merkle::encode_row(summary, i).map(|e| merkle::leaf_hash(&e)))
            .collect::<Result<Vec<_>, _>>()?;
        let root = hex::encode(merkle::root(&leaves));
        if root != expected_root {
            return Err(Invalid(format!(
                "device_summary gives root {root}, the manifest says {expected_root}"
            )));
        }
        let keys = summary
            .column_by_name("device_key")
            .ok_or_else(|| Invalid("device_summary has no device_key column".into()))?
            .as_string_opt::<i32>()
            .ok_or_else(|| Invalid("device_summary's device_key is not a string".into()))?;
        let index = (0..summary.num_rows())
            .find(|i| keys.value(*i) == device_key)
            .ok_or_else(|| {
                Invalid(format!(
                    "device {device_key} has no summary in epoch {epoch}"
                ))
            })?;
        Ok(Proof {
            epoch,
            device_key: device_key.to_string(),
            index: index as u64,
            leaves: leaves.len() as u64,
            row: merkle::row_json(summary, index),
            leaf: hex::encode(leaves[index]),
            path: merkle::proof(&leaves, index),
            root,
        })
    }

    /// Checks the proof against a root taken from a manifest: the leaf is recomputed from the row,
    /// so a changed row (or a changed path) fails.
    pub fn verify(&self, manifest_root: &str) -> Result<(), Invalid> {
        if self.row.get("device_key").and_then(Value::as_str) != Some(self.device_key.as_str()) {
            return Err(Invalid("the row is not the device's".into()));
        }
        let leaf = merkle::leaf_hash(&merkle::encode_json_row(&self.row)?);
        let root = hex::encode(merkle::fold(leaf, &self.path)?);
        if root != manifest_root {
            return Err(Invalid(format!(
                "proof leads to root {root}, not {manifest_root}"
            )));
        }
        Ok(())
    }
}
