//! The Merkle tree over an epoch's device summaries. `schemas/EPOCHS.md` is its specification, with
//! test vectors that `rewards/tests/epochs_spec.rs` checks against this code; its name is
//! [`crate::LEAF_ENCODING`].
//!
//! **Leaves**: one per `device_summary` row, in file order (sorted by `device_key`):
//! `leaf = SHA-256(0x00 || row encoding)`, where the row encoding concatenates every column in
//! schema order: `Int64`/`UInt64` as 8 bytes big-endian, `UInt32` as 4 bytes big-endian, `Float64` as
//! the 8 big-endian bytes of its IEEE-754 bits, `Utf8` as a 4-byte big-endian length then the UTF-8
//! bytes; a nullable column is preceded by one byte, 0 for null (then nothing) or 1.
//! **Nodes**: `SHA-256(0x01 || left || right)`; a level with an odd count carries its last node up
//! unchanged. The root of zero leaves is `SHA-256("")`.
//! A **proof** lists, from the leaf up, each sibling with its side.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, UInt32Type, UInt64Type};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::Invalid;

/// A SHA-256 digest: a leaf, a node or the root.
pub type Hash = [u8; 32];

/// The encoding of row `i` of `batch` (see the module docs).
pub fn encode_row(batch: &RecordBatch, i: usize) -> Result<Vec<u8>, Invalid> {
    let mut out = Vec::with_capacity(512);
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        if field.is_nullable() {
            if col.is_null(i) {
                out.push(0);
                continue;
            }
            out.push(1);
        }
        match field.data_type() {
            DataType::Int64 => out.extend(col.as_primitive::<Int64Type>().value(i).to_be_bytes()),
            DataType::UInt64 => out.extend(col.as_primitive::<UInt64Type>().value(i).to_be_bytes()),
            DataType::UInt32 => out.extend(col.as_primitive::<UInt32Type>().value(i).to_be_bytes()),
            DataType::Float64 => out.extend(
                col.as_primitive::<Float64Type>()
                    .value(i)
                    .to_bits()
                    .to_be_bytes(),
            ),
            DataType::Utf8 => {
                let s = col.as_string::<i32>().value(i);
                out.extend((s.len() as u32).to_be_bytes());
                out.extend(s.as_bytes());
            }
            other => {
                return Err(Invalid(format!(
                    "column {} has type {other}, which has no leaf encoding",
                    field.name()
                )));
            }
        }
    }
    Ok(out)
}

/// Row `i` of `batch` as JSON, a member per column in schema order (the form a proof carries; floats
/// as JSON numbers, which round-trip exactly).
pub fn row_json(batch: &RecordBatch, i: usize) -> Map<String, Value> {
    let mut m = Map::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        let v = if c.is_null(i) {
            Value::Null
        } else {
            match f.data_type() {
                DataType::Int64 => Value::from(c.as_primitive::<Int64Type>().value(i)),
                DataType::UInt64 => Value::from(c.as_primitive::<UInt64Type>().value(i)),
                DataType::UInt32 => Value::from(c.as_primitive::<UInt32Type>().value(i)),
                DataType::Float64 => Value::from(c.as_primitive::<Float64Type>().value(i)),
                DataType::Utf8 => Value::from(c.as_string::<i32>().value(i)),
                _ => Value::Null,
            }
        };
        m.insert(f.name().clone(), v);
    }
    m
}

/// The leaf encoding of a `device_summary` row given as JSON ([`row_json`]'s form), column by
/// column of `schemas::tables::device_summary_schema`: the same bytes as [`encode_row`] of the row.
pub fn encode_json_row(row: &Map<String, Value>) -> Result<Vec<u8>, Invalid> {
    let schema = hexpulse_schemas::tables::device_summary_schema();
    let mut out = Vec::new();
    let bad = |name: &str| Invalid(format!("proof row: column {name} missing or mistyped"));
    for f in schema.fields() {
        let v = row.get(f.name()).ok_or_else(|| bad(f.name()))?;
        if f.is_nullable() {
            if v.is_null() {
                out.push(0);
                continue;
            }
            out.push(1);
        }
        match f.data_type() {
            DataType::Int64 => out.extend(v.as_i64().ok_or_else(|| bad(f.name()))?.to_be_bytes()),
            DataType::UInt64 => out.extend(v.as_u64().ok_or_else(|| bad(f.name()))?.to_be_bytes()),
            DataType::UInt32 => {
                let x = u32::try_from(v.as_u64().ok_or_else(|| bad(f.name()))?)
                    .map_err(|_| bad(f.name()))?;
                out.extend(x.to_be_bytes())
            }
            DataType::Float64 => out.extend(
                v.as_f64()
                    .ok_or_else(|| bad(f.name()))?
                    .to_bits()
                    .to_be_bytes(),
            ),
            DataType::Utf8 => {
                let s = v.as_str().ok_or_else(|| bad(f.name()))?;
                out.extend((s.len() as u32).to_be_bytes());
                out.extend(s.as_bytes());
            }
            _ => return Err(bad(f.name())),
        }
    }
    Ok(out)
}

/// The leaf of an encoded row: `SHA-256(0x00 || encoded_row)`.
pub fn leaf_hash(encoded_row: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(encoded_row);
    h.finalize().into()
}

fn node(l: &Hash, r: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// Every level of the tree, leaves first.
fn levels(leaves: Vec<Hash>) -> Vec<Vec<Hash>> {
    let mut levels = vec![leaves];
    while levels.last().expect("non-empty").len() > 1 {
        let prev = levels.last().expect("non-empty");
        let next = prev
            .chunks(2)
            .map(|c| {
                if c.len() == 2 {
                    node(&c[0], &c[1])
                } else {
                    c[0]
                }
            })
            .collect();
        levels.push(next);
    }
    levels
}

/// The root over `leaves`, in order (`SHA-256("")` for none).
pub fn root(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        return Sha256::digest(b"").into();
    }
    levels(leaves.to_vec()).last().expect("non-empty")[0]
}

/// One step of a proof: the sibling hash and whether it sits on the left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Where the sibling sits.
    pub side: Side,
    /// The sibling's hash, hex.
    pub hash: String,
}

/// The side of a proof step's sibling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The sibling is the left input of the node: `node(sibling, acc)`.
    Left,
    /// The sibling is the right input: `node(acc, sibling)`.
    Right,
}

/// The path of leaf `index` to the root.
pub fn proof(leaves: &[Hash], index: usize) -> Vec<Step> {
    let mut path = Vec::new();
    let mut i = index;
    for level in levels(leaves.to_vec()) {
        if level.len() == 1 {
            break;
        }
        let sibling = i ^ 1;
        if sibling < level.len() {
            path.push(Step {
                side: if sibling < i { Side::Left } else { Side::Right },
                hash: hex::encode(level[sibling]),
            });
        }
        i /= 2;
    }
    path
}

/// The root a leaf and its path lead to.
pub fn fold(leaf: Hash, path: &[Step]) -> Result<Hash, Invalid> {
    let mut acc = leaf;
    for s in path {
        let mut sib = [0u8; 32];
        hex::decode_to_slice(&s.hash, &mut sib)
            .map_err(|e| Invalid(format!("proof step hash: {e}")))?;
        acc = match s.side {
            Side::Left => node(&sib, &acc),
            Side::Right => node(&acc, &sib),
        };
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_leaf_proves_and_a_changed_leaf_does_not() {
        for n in 1..=9usize {
            let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&[i as u8])).collect();
            let r = root(&leaves);
            for i in 0..n {
                let p = proof(&leaves, i);
                assert_eq!(fold(leaves[i], &p).unwrap(), r, "n={n} i={i}");
                assert_ne!(fold(leaf_hash(&[99]), &p).unwrap(), r);
            }
        }
        assert_eq!(hex::encode(root(&[])), hex::encode(Sha256::digest(b"")));
    }
}
