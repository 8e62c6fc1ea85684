//! Logging (`tracing`, filtered by `RUST_LOG`, default [`DEFAULT_FILTER`]) and the Prometheus
//! metrics recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Our own `info`; the libraries' warnings only (delta-rs's kernel logs every snapshot it builds at
/// `info`, which is several lines per table and catalog refresh).
pub const DEFAULT_FILTER: &str = "warn,hexpulse=info,hexpulse_common=info,hexpulse_schemas=info,\
hexpulse_ingest=info,hexpulse_processors=info,hexpulse_lake=info,hexpulse_query=info,hexpulse_load_tests=info";

/// Installs the log subscriber once; later calls do nothing.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The process-wide Prometheus recorder, installed on first use. Render it on `/metrics`.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests run several services in one process);
            // the handle still renders what this recorder saw.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
