//! Metric names of the ingest service (Prometheus, `hexpulse_ingest_*`). Label values are bounded:
//! HTTP status codes, outcomes and the reason codes of `RejectReason`.

pub const REQUESTS: &str = "hexpulse_ingest_requests_total"; // label: status
pub const ITEMS: &str = "hexpulse_ingest_items_total"; // labels: outcome, reason
pub const VERIFY_BATCH_SIZE: &str = "hexpulse_ingest_verify_batch_size";
pub const VERIFY_SECONDS: &str = "hexpulse_ingest_verify_seconds";
/// The running share of bad signatures that plans batch verification (of the latest request's
/// source: each client address has its own).
pub const BAD_SIGNATURE_SHARE: &str = "hexpulse_ingest_bad_signature_share";
/// Signature checks done, by kind: `batch` (one batch equation) or `single`.
pub const SIGNATURE_CHECKS: &str = "hexpulse_ingest_signature_checks_total";
pub const PRODUCE_SECONDS: &str = "hexpulse_ingest_produce_seconds";
pub const INFLIGHT_BYTES: &str = "hexpulse_ingest_inflight_bytes";
pub const REQUEST_SECONDS: &str = "hexpulse_ingest_request_seconds";
pub const BROKER_UP: &str = "hexpulse_ingest_broker_up";
pub const PRODUCER_REPLACED: &str = "hexpulse_ingest_producer_replaced_total";
/// Deliveries the broker acknowledged without an offset: librdkafka's answer to a resent batch that
/// the broker calls a duplicate (`DuplicateSequenceNumber`). Answered as not delivered.
pub const DELIVERED_WITHOUT_OFFSET: &str = "hexpulse_ingest_delivered_without_offset_total";
/// gRPC calls by method (`Submit`, `Stream`) and the status they ended with (for `Stream`: refused
/// at opening, or ended by idling, shutdown or a bad message).
pub const GRPC_CALLS: &str = "hexpulse_ingest_grpc_calls_total";
/// Batches of gRPC streams refused as a whole, by code.
pub const GRPC_STREAM_REFUSED: &str = "hexpulse_ingest_grpc_stream_refused_total";
pub const GRPC_STREAMS_OPEN: &str = "hexpulse_ingest_grpc_streams_open";
