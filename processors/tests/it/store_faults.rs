//! The object store fails writes for a while: the processor retries with backoff, commits nothing
//! meanwhile, and once the store recovers the lake holds every record exactly once.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::stream::BoxStream;
use hexpulse_common::registry::Registry;
use hexpulse_common::testenv;
use hexpulse_load_tests::scenario;
use hexpulse_processors::ProcessConfig;
use hexpulse_processors::lake::Lake;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use tokio_util::sync::CancellationToken;

use crate::support::*;

/// Wraps a store; while `failing`, every write fails.
#[derive(Debug)]
struct Flaky {
    inner: Arc<dyn ObjectStore>,
    failing: AtomicBool,
    refused: AtomicU64,
}

impl fmt::Display for Flaky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Flaky({})", self.inner)
    }
}

impl Flaky {
    fn check(&self) -> Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(object_store::Error::Generic {
                store: "flaky",
                source: "injected write failure".into(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ObjectStore for Flaky {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.check()?;
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.check()?;
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.check()?;
        self.inner.copy_opts(from, to, options).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_loses_nothing() {
    let Some(brokers) = testenv::broker_or_skip("store_outage_loses_nothing") else {
        return;
    };
    let now = now_ms();
    let sc = scenario::build(now, 20);
    let kafka = kafka(&brokers, "it-proc-store", 2);
    produce(&kafka, &sc, now).await;

    let dir = tempfile::tempdir().unwrap();
    let lake_url = dir.path().to_str().unwrap().to_string();
    let local = Lake::open(&lake_url).unwrap();
    let flaky = Arc::new(Flaky {
        inner: local.store().clone(),
        failing: AtomicBool::new(true),
        refused: AtomicU64::new(0),
    });
    let mut cfg = ProcessConfig::for_tests(&lake_url);
    cfg.group_id = format!("{}-g", kafka.raw_topic);
    cfg.reverify_signatures = true;
    let stop = CancellationToken::new();
    let p = hexpulse_processors::run::start(
        cfg,
        kafka.clone(),
        Registry::from_devices(sc.devices.clone()).unwrap(),
        Lake::from_store(flaky.clone()),
        stop.clone(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        flaky.refused.load(Ordering::SeqCst) > 1,
        "the processor tried (and retried) to write"
    );
    let during = hexpulse_processors::inspect::summarize(&local)
        .await
        .unwrap();
    assert_eq!(
        during.distinct_records(),
        0,
        "nothing published while the store fails"
    );
    flaky.failing.store(false, Ordering::SeqCst);
    let summary = wait_for(&local, sc.records.len(), Duration::from_secs(60)).await;
    stop.cancel();
    p.task.await.unwrap().unwrap();
    assert_matches(&summary, &sc);
}
