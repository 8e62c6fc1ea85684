//! The Merkle tree over an epoch's device summaries. `schemas/EPOCHS.md` is its specification, with
//! test vectors that `lake/tests/it/epochs_spec.rs` checks against this code.
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
use sha2::{Digest, Sha256};

use super::EpochError;

pub type Hash = [u8; 32];

/// The encoding of row `i` of `batch` (see the module docs).
pub fn encode_row(batch: &RecordBatch, i: usize) -> Result<Vec<u8>, EpochError> {
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
                return Err(EpochError::Invalid(format!(
                    "column {} has type {other}, which has no leaf encoding",
                    field.name()
                )));
            }
        }
    }
    Ok(out)
}

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

pub fn root(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        return Sha256::digest(b"").into();
    }
    levels(leaves.to_vec()).last().expect("non-empty")[0]
}

/// One step of a proof: the sibling hash and whether it sits on the left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub side: Side,
    pub hash: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Left,
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
pub fn fold(leaf: Hash, path: &[Step]) -> Result<Hash, EpochError> {
    let mut acc = leaf;
    for s in path {
        let mut sib = [0u8; 32];
        hex::decode_to_slice(&s.hash, &mut sib)
            .map_err(|e| EpochError::Invalid(format!("proof step hash: {e}")))?;
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
