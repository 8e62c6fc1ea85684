//! Hexpulse's reward logic, pure: no I/O, no async runtime, no storage. A reward oracle that checks
//! sealed epochs can depend on this crate alone; `schemas/EPOCHS.md` specifies the same rules in
//! words and test vectors, for verifiers in other languages.
//!
//! - [`points`]: the reward formula of the rules file's `[rewards]` section;
//! - [`merkle`]: the Merkle tree over an epoch's `device_summary` rows: the leaf encoding, the tree,
//!   inclusion paths;
//! - [`proof`]: a device's inclusion proof as the query service and `hexpulse epoch proof` give it,
//!   and its check against a manifest's root.
//!
//! The lake crate computes epochs with these (`hexpulse_lake::epoch`).

#![warn(missing_docs)]

pub mod merkle;
pub mod points;
pub mod proof;

/// The name of the Merkle leaf encoding ([`merkle`]), recorded in every sealed manifest: a new
/// encoding gets a new name.
pub const LEAF_ENCODING: &str = "hexpulse/v1";

/// A row or proof that does not fit the encoding, or a proof that does not lead to its root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);
