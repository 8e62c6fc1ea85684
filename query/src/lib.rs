//! Hexpulse query service: DataFusion over the Parquet lake.
//!
//! **Not built yet** (issue #6). `hexpulse query` reports this and exits with an error rather than
//! pretending to run.
