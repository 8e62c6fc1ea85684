//! Compaction and sealing die at every write they make (the store refuses everything from the n-th
//! write on, as if the process had been killed there). After each death, readers see exactly the
//! rows they saw before, or the complete new state, never partial or double data; a restart then
//! finishes the job with the same result as an uninterrupted run.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hexpulse_lake::Lake;
use hexpulse_lake::compact::{self, CompactOptions};
use hexpulse_lake::epoch::EpochConfig;
use hexpulse_lake::epoch::seal;
use hexpulse_testkit::inspect::summarize;
use hexpulse_testkit::scenario;

use crate::compaction::physical;
use crate::faulty::Flaky;
use crate::support::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// Two maintenance rounds (compaction, then a vacuum that deletes what it replaced) through `lake`.
async fn compact_twice(lake: &Lake, cut: i64) -> Result<(), String> {
    let gc = CompactOptions {
        retention: Duration::ZERO,
        ..Default::default()
    };
    for _ in 0..2 {
        compact::compact_closed(lake, cut, &gc)
            .await
            .map_err(|e| e.to_string())?;
        compact::vacuum(lake, gc.retention)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_dying_at_any_write_leaves_readers_exact() {
    let now = now_ms();
    let sc = scenario::build(now, 12);
    let base = write_lake(&sc, now, 2, 15).await;
    let cut = now + 3 * 3_600_000;
    assert_matches(
        &summarize(&Lake::open(base.path().to_str().unwrap()).unwrap())
            .await
            .unwrap(),
        &sc,
    );

    // How many writes the whole job makes.
    let probe = tempfile::tempdir().unwrap();
    copy_dir(base.path(), probe.path());
    let local = Lake::open(probe.path().to_str().unwrap()).unwrap();
    let counting = Arc::new(Flaky::new(local.store().clone()));
    compact_twice(&Lake::from_store(counting.clone()), cut)
        .await
        .unwrap();
    let total = counting.writes.load(Ordering::SeqCst) as i64;
    let clean = physical(&local).await;
    assert!(total >= 8, "{total} writes");

    for k in 0..total {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        let local = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let dying = Arc::new(Flaky::dying_after(local.store().clone(), k));
        let outcome = compact_twice(&Lake::from_store(dying), cut).await;
        assert!(outcome.is_err(), "write {k} of {total} was refused");
        // Readers after the death: every record exactly once.
        let seen = summarize(&local).await.unwrap();
        assert_matches(&seen, &sc);
        // The restart finishes the job: the same files as an uninterrupted run, same rows.
        compact_twice(&local, cut).await.unwrap();
        assert_eq!(physical(&local).await, clean, "after dying at write {k}");
        assert_matches(&summarize(&local).await.unwrap(), &sc);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealing_dying_at_any_write_publishes_nothing_partial() {
    let now = yesterday_noon();
    let sc = scenario::build(now, 12);
    let base = write_lake(&sc, now, 3, 15).await;
    let cfg = EpochConfig::default();
    let id = cfg.id_of(now - 30_000).unwrap();
    let seal_via = |input: Lake, output: Lake| {
        let cfg = cfg.clone();
        async move { force_seal(&input, &output, &cfg, id).await }
    };

    let probe = tempfile::tempdir().unwrap();
    copy_dir(base.path(), probe.path());
    let local = Lake::open(probe.path().to_str().unwrap()).unwrap();
    let counting = Arc::new(Flaky::new(local.store().clone()));
    let clean = seal_via(local.clone(), Lake::from_store(counting.clone()))
        .await
        .unwrap();
    let total = counting.writes.load(Ordering::SeqCst) as i64;
    assert_eq!(total, 5, "four tables, then the manifest");

    for k in 0..total {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        let local = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let dying = Arc::new(Flaky::dying_after(local.store().clone(), k));
        assert!(
            seal_via(local.clone(), Lake::from_store(dying))
                .await
                .is_err()
        );
        // No manifest, so no reader trusts any of the files written so far.
        assert!(seal::read_manifest(&local, id).await.unwrap().is_none());
        assert!(
            hexpulse_lake::epoch::sealed_ids(&local)
                .await
                .unwrap()
                .is_empty()
        );
        // The restart seals it, byte-identical to the uninterrupted run.
        let m = seal_via(local.clone(), local.clone()).await.unwrap();
        assert_eq!(m.outputs, clean.outputs, "after dying at write {k}");
        assert_eq!(m.merkle_root, clean.merkle_root);
        for o in &m.outputs {
            seal::read_output(&local, &m, &o.table).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_dying_at_any_write_adds_each_output_once() {
    use hexpulse_lake::epoch::publish::{self, EPOCH_TABLES};
    let now = yesterday_noon();
    let sc = scenario::build(now, 8);
    let base = write_lake(&sc, now, 2, 15).await;
    let cfg = EpochConfig::default();
    let id = cfg.id_of(now - 30_000).unwrap();
    let base_lake = Lake::open(base.path().to_str().unwrap()).unwrap();
    let m = force_seal(&base_lake, &base_lake, &cfg, id).await.unwrap();

    // How many writes an uninterrupted publishing makes.
    let probe = tempfile::tempdir().unwrap();
    copy_dir(base.path(), probe.path());
    let local = Lake::open(probe.path().to_str().unwrap()).unwrap();
    let counting = Arc::new(Flaky::new(local.store().clone()));
    assert_eq!(
        publish::publish(&Lake::from_store(counting.clone()), &m)
            .await
            .unwrap(),
        4
    );
    let total = counting.writes.load(Ordering::SeqCst) as i64;
    assert!(
        total >= 8,
        "a table creation and a commit per table: {total}"
    );

    for k in 0..total {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        let local = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let dying = Arc::new(Flaky::dying_after(local.store().clone(), k));
        assert!(
            publish::publish(&Lake::from_store(dying), &m)
                .await
                .is_err()
        );
        // The restart (the sealer's round) publishes what is missing, and only that.
        let fresh = Lake::open(dir.path().to_str().unwrap()).unwrap();
        publish::publish_sealed(&fresh).await.unwrap();
        assert_eq!(publish::publish_sealed(&fresh).await.unwrap(), 0);
        for table in EPOCH_TABLES {
            let (_, files) = fresh
                .table(&publish::table_root(table))
                .files()
                .await
                .unwrap();
            assert_eq!(
                files.iter().map(|f| f.path.clone()).collect::<Vec<_>>(),
                [m.output(table).unwrap().path.clone()],
                "{table} after dying at write {k}"
            );
            let rows: u64 = files.iter().filter_map(|f| f.rows).sum();
            let listed = m.outputs.iter().find(|o| o.table == table).unwrap();
            assert_eq!(rows, listed.rows, "{table} after dying at write {k}");
        }
    }
}
