//! Hexpulse ingest: the edge of the system. Devices POST batches of signed readings; ingest checks
//! them and enqueues the good ones into Kafka, and answers only after Kafka acknowledged them.
//!
//! Request flow (`POST /v1/readings`):
//! 1. [`body`]: content type (415), size and decompressed size (413), decode (400), item limit (413);
//! 2. [`pipeline`]: per item, on a CPU pool off the I/O runtime: decode, kind/version, device known and
//!    of the registered kind, then one batched Ed25519 verification for all survivors (searched by halves
//!    when it fails, so good items are not re-checked one by one);
//! 3. [`produce`]: every accepted item is produced (idempotent, acks=all), keyed by device public key,
//!    value = the envelope (receive time, node) around the `SignedReading` bytes; the answer waits for every
//!    delivery report. An item whose delivery failed is reported as rejected, never accepted.
//!
//! Overload is refused rather than queued: in-flight request bytes are bounded ([`server`], 429), a
//! full producer queue gives 429, an unreachable broker 503, both with `Retry-After`.

pub mod body;
pub mod config;
pub mod metrics;
pub mod pipeline;
pub mod produce;
pub mod server;

pub use config::{IngestConfig, MqttConfig};
pub use server::{Ingest, run};
