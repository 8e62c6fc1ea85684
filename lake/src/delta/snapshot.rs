//! Full reads of a table's log through the Delta kernel, each on threads of its own, keeping
//! only its answer: the file lists of pinned versions, and checkpoints.

use super::*;

impl Table {
    /// The data files of the snapshot at `version`.
    pub async fn files_at(&self, version: i64) -> Result<Vec<DataFile>, LakeError> {
        Ok(self.snapshot_files(Some(version)).await?.1)
    }

    /// Writes a checkpoint of the snapshot at `version`, and points `_last_checkpoint` at it.
    pub async fn checkpoint_newest(&self, version: i64) -> Result<(), LakeError> {
        self.write_checkpoint(version).await
    }

    /// Writes a checkpoint at `version` (see [`Table::with_snapshot`]).
    pub(super) async fn write_checkpoint(&self, version: i64) -> Result<(), LakeError> {
        self.with_snapshot(Some(version), |snapshot, engine| {
            snapshot.checkpoint(engine, None).map(|_| ())
        })
        .await
    }

    /// Runs `job` on a Delta kernel snapshot of the table at `version` (the newest when `None`),
    /// on a thread of its own with the kernel's background executor (a second thread with its own
    /// runtime). Every full read of the log goes through here: checkpoints, the base of the walk,
    /// pinned versions, and transactions older than the walk.
    ///
    /// Why: a log replay allocates in proportion to the live files (about 50 KB each), and when it
    /// ran on the runtime's threads (delta-rs `DeltaTable::load`, `create_checkpoint`) the process's
    /// resident memory grew by tens of MB at each one and never came back, with mimalloc as with
    /// glibc: the transient replay shared allocator pages with the process's long-lived state
    /// (issue #21). On threads that end with the job, its allocations go with them; only `T` stays.
    pub(super) async fn with_snapshot<T: Send + 'static>(
        &self,
        version: Option<i64>,
        job: impl FnOnce(
            &delta_kernel::snapshot::SnapshotRef,
            &dyn delta_kernel::Engine,
        ) -> delta_kernel::DeltaResult<T>
        + Send
        + 'static,
    ) -> Result<T, LakeError> {
        let store = self.log_store.root_object_store(None);
        let root = self.log_store.config().location().clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("delta-snapshot".into())
            .spawn(move || {
                let engine = delta_kernel_default_engine::DefaultEngineBuilder::new(store).build();
                let mut builder = delta_kernel::snapshot::Snapshot::builder_for(root.as_str());
                if let Some(v) = version {
                    builder = builder.at_version(v as u64);
                }
                let out = builder
                    .build(&engine)
                    .and_then(|snapshot| job(&snapshot, &engine));
                drop(engine);
                let _ = tx.send(out);
            });
        let failed = |message: String| LakeError::Corrupt {
            path: self.name.clone(),
            message,
        };
        spawned.map_err(|e| failed(format!("snapshot thread: {e}")))?;
        match rx.await {
            Ok(r) => r.map_err(|e| LakeError::Delta(e.into())),
            Err(_) => Err(failed("the snapshot thread died".into())),
        }
    }

    /// The version and the data files (sorted by path) of the snapshot at `version`, or the newest.
    pub(super) async fn snapshot_files(
        &self,
        version: Option<i64>,
    ) -> Result<(i64, Vec<DataFile>), LakeError> {
        let (version, files) = self
            .with_snapshot(version, |snapshot, engine| {
                let scan = snapshot.clone().scan_builder().build()?;
                let mut files = Vec::new();
                for meta in scan.scan_metadata(engine)? {
                    files = meta?.visit_scan_files(files, |files: &mut Vec<DataFile>, f| {
                        let part = |k: &str| f.partition_values.get(k).cloned();
                        files.push(DataFile {
                            path: f.path,
                            size: f.size.max(0) as u64,
                            modified_ms: f.modification_time,
                            rows: f.stats.map(|s| s.num_records),
                            date: part("date"),
                            hour: part("hour").and_then(|h| h.parse().ok()),
                        });
                    })?;
                }
                Ok((snapshot.version() as i64, files))
            })
            .await?;
        let mut files: Vec<DataFile> = files
            .into_iter()
            .map(|f| DataFile {
                path: self.path_of(&f.path),
                ..f
            })
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((version, files))
    }

    /// Writes a checkpoint of the snapshot at `version`, so that the version stays loadable once the
    /// commits before it are deleted. The `_last_checkpoint` hint keeps pointing at the newest
    /// checkpoint.
    pub async fn checkpoint_at(&self, version: i64) -> Result<(), LakeError> {
        let hint = Path::from(format!("{}/_delta_log/_last_checkpoint", self.name));
        let before = match self.lake_store.get(&hint).await {
            Ok(r) => Some(r.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        self.write_checkpoint(version).await?;
        if let Some(bytes) = before {
            self.lake_store.put(&hint, PutPayload::from(bytes)).await?;
        }
        Ok(())
    }

    /// The paths (from the lake root) of the data files of any of `versions` (each version is read
    /// once per process).
    pub async fn files_at_any(
        &self,
        versions: &BTreeSet<i64>,
    ) -> Result<Arc<HashSet<String>>, LakeError> {
        let missing: Vec<i64> = {
            let pinned = self.pinned.lock().expect("pinned lock");
            versions.difference(&pinned.versions).copied().collect()
        };
        for version in missing {
            let files = self.files_at(version).await?;
            let mut pinned = self.pinned.lock().expect("pinned lock");
            if pinned.versions.insert(version) {
                Arc::make_mut(&mut pinned.files).extend(files.into_iter().map(|f| f.path));
            }
        }
        Ok(self.pinned.lock().expect("pinned lock").files.clone())
    }
}
