//! Hexpulse stream processors: consume raw signed readings from Kafka, validate them, bin them into H3
//! cells and write Parquet to the lake exactly once.
//!
//! **Not built yet** (issue #4). `hexpulse process` reports this and exits with an error rather than
//! pretending to run.
