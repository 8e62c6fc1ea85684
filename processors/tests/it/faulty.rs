//! An object store wrapper that fails writes on demand: for a while (an outage), or from the n-th
//! write on (a process that died at that point: nothing it would have written later happens), or
//! as a store that refuses the credentials (a permanent error); and hides manifests from a sealer
//! that looked too early.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// Wraps a store. While `failing`, every write (put, copy, delete) fails. `budget` is how many more
/// writes succeed before every later one fails (negative: no limit).
#[derive(Debug)]
pub struct Flaky {
    inner: Arc<dyn ObjectStore>,
    pub failing: AtomicBool,
    /// While set, every write fails as a store that refuses this process's credentials does.
    pub denied: AtomicBool,
    pub budget: AtomicI64,
    pub refused: AtomicU64,
    pub writes: AtomicU64,
    /// How many more reads of a `manifest.json` answer "not found", as for a sealer that looked
    /// before another one's manifest appeared.
    pub hide_manifests: AtomicU64,
}

impl Flaky {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Flaky {
        Flaky {
            inner,
            failing: AtomicBool::new(false),
            denied: AtomicBool::new(false),
            budget: AtomicI64::new(-1),
            refused: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            hide_manifests: AtomicU64::new(0),
        }
    }

    /// A store that dies after `n` writes.
    pub fn dying_after(inner: Arc<dyn ObjectStore>, n: i64) -> Flaky {
        let f = Flaky::new(inner);
        f.budget.store(n, Ordering::SeqCst);
        f
    }

    fn check(&self) -> Result<()> {
        let out_of_budget = self
            .budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| match b {
                0 => None,
                b if b < 0 => Some(b),
                b => Some(b - 1),
            })
            .is_err();
        if self.denied.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(object_store::Error::PermissionDenied {
                path: "lake".into(),
                source: "injected: this process may not write here".into(),
            });
        }
        if self.failing.load(Ordering::SeqCst) || out_of_budget {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(object_store::Error::Generic {
                store: "flaky",
                source: "injected write failure".into(),
            });
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl fmt::Display for Flaky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Flaky({})", self.inner)
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
        let hidden = location.as_ref().ends_with("manifest.json")
            && self
                .hide_manifests
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if hidden {
            return Err(object_store::Error::NotFound {
                path: location.to_string(),
                source: "hidden: read before the manifest appeared".into(),
            });
        }
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        if self.check().is_err() {
            return locations
                .map(|_| {
                    Err(object_store::Error::Generic {
                        store: "flaky",
                        source: "injected delete failure".into(),
                    })
                })
                .boxed();
        }
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
