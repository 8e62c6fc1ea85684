//! Hexpulse contracts: the bottom layer every other crate builds on.
//!
//! - [`wire`]: the protobuf messages devices send (`SignedReading`, `ReadingBatch`, `Reading`, ...),
//!   compiled from `proto/hexpulse/v1/reading.proto` with prost.
//! - [`sign`]: Ed25519 over a fixed domain-separation prefix plus the exact payload bytes; single and
//!   batch verification; weak (small-order) keys refused.
//! - [`json`]: the JSON form of a batch for devices that cannot speak protobuf.
//! - [`check`]: the stateless item checks every stage shares (decode, kind/version, key, signature).
//! - [`reasons`]: the rejection-reason enum with stable string codes.
//! - [`tables`]: Arrow schemas of the lake tables.
//!
//! This crate has no async runtime and no Kafka client on purpose: it is pure contract. The wire format
//! is documented for third parties in `schemas/WIRE.md`, with vectors in `schemas/testdata/`.

#![warn(missing_docs)]

pub mod check;
pub mod json;
pub mod reasons;
pub mod sign;
pub mod tables;
pub mod wire;

pub use reasons::RejectReason;
