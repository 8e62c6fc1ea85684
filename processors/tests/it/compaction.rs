//! Compaction of a lake the processor wrote from broker traffic: fewer files, the same rows, readers
//! never see the small files and the merged ones together, and a replay afterwards changes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::UInt64Type;
use hexpulse_common::registry::Registry;
use hexpulse_lake::compact::{self, CompactOptions, Outcome};
use hexpulse_lake::{Lake, decode_parquet};
use hexpulse_processors::ProcessConfig;
use hexpulse_testkit::inspect::summarize;
use hexpulse_testkit::scenario;
use hexpulse_testkit::testenv;
use tokio_util::sync::CancellationToken;

use crate::support::*;

/// Every Parquet data file physically in the lake's tables, valid or not, sorted (the Delta log's
/// checkpoints left out).
pub async fn physical(lake: &Lake) -> Vec<String> {
    let mut all = Vec::new();
    for t in compact::tables() {
        all.extend(
            lake.list(&format!("{t}/"))
                .await
                .unwrap()
                .into_iter()
                .filter(|p| p.ends_with(".parquet") && !p.contains("/_delta_log/")),
        );
    }
    all.sort();
    all
}

async fn valid(lake: &Lake) -> Vec<String> {
    let mut all = Vec::new();
    for t in compact::tables() {
        all.extend(compact::valid_files(lake, t).await.unwrap());
    }
    all.sort();
    all
}

async fn run_processor(cfg: ProcessConfig, kafka: &KafkaConfig, reg: &Registry, url: &str) {
    let stop = CancellationToken::new();
    let p = hexpulse_processors::run::start(
        cfg,
        kafka.clone(),
        reg.clone(),
        Lake::open(url).unwrap(),
        stop.clone(),
    )
    .await
    .unwrap();
    let lake = Lake::open(url).unwrap();
    let _ = wait_for(&lake, 1, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.cancel();
    p.task.await.unwrap().unwrap();
}

use hexpulse_common::kafka::KafkaConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_merges_closed_hours_without_changing_any_row() {
    let Some(brokers) = testenv::broker_or_skip("compaction_merges_closed_hours") else {
        return;
    };
    let now = now_ms();
    let sc = scenario::build(now, 40);
    let kafka = kafka(&brokers, "it-proc-compact", 2);
    produce(&kafka, &sc, now).await;

    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().to_str().unwrap().to_string();
    let registry = Registry::from_devices(sc.devices.clone()).unwrap();
    let mut cfg = ProcessConfig::for_tests(&url);
    cfg.group_id = format!("{}-g", kafka.raw_topic);
    cfg.roll_rows = 40; // many small files
    cfg.reverify_signatures = true; // the scenario has a forged signature
    let stop = CancellationToken::new();
    let p = hexpulse_processors::run::start(
        cfg.clone(),
        kafka.clone(),
        registry.clone(),
        Lake::open(&url).unwrap(),
        stop.clone(),
    )
    .await
    .unwrap();
    let lake = Lake::open(&url).unwrap();
    let before = wait_for(&lake, sc.records.len(), Duration::from_secs(90)).await;
    stop.cancel();
    p.task.await.unwrap().unwrap();
    assert_matches(&before, &sc);
    let small = physical(&lake).await;
    assert!(small.len() > 10, "the scenario made {} files", small.len());

    // An interrupted compaction's merged file (no commit adds it) is invisible to readers.
    let orphan = small[0].rsplit_once('/').unwrap().0.to_string()
        + "/compacted-0000000000000000-000.parquet";
    lake.put(&orphan, lake.get(&small[0]).await.unwrap().unwrap())
        .await
        .unwrap();
    assert_matches(&summarize(&lake).await.unwrap(), &sc);

    // Readers keep reading while compaction commits: every snapshot they see is exact.
    let stop_readers = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (lake, sc, stop, reads) = (
            lake.clone(),
            sc.clone(),
            stop_readers.clone(),
            reads.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                assert_matches(&summarize(&lake).await.unwrap(), &sc);
                reads.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let keep = CompactOptions {
        retention: Duration::from_secs(3600),
        ..Default::default()
    };
    // Every hour counts as closed; two compactors race on the same lake.
    let cut = now + 3 * 3_600_000;
    let (a, b) = tokio::join!(
        compact::compact_closed(&lake, cut, &keep),
        compact::compact_closed(&lake, cut, &keep)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_readers.store(true, Ordering::SeqCst);
    reader.await.unwrap();
    assert!(reads.load(Ordering::SeqCst) > 0, "the reader ran");
    let committed = a
        .iter()
        .chain(&b)
        .filter(|d| matches!(d.3, Outcome::Compacted { .. }))
        .count();
    assert!(committed >= 4, "each table's hour compacted: {a:?} {b:?}");

    let after = summarize(&lake).await.unwrap();
    assert_matches(&after, &sc);
    let merged = valid(&lake).await;
    assert!(
        merged.len() < small.len() / 3,
        "{} valid files after compaction, {} before",
        merged.len(),
        small.len()
    );
    // Every hour that had two files or more is merged; an hour with a single file (a run that
    // crossed the turn of an hour) keeps it.
    let folder = |f: &str| {
        f.rsplit_once('/')
            .map(|(d, _)| d.to_string())
            .unwrap_or_default()
    };
    let single: Vec<String> = small
        .iter()
        .map(|f| folder(f))
        .filter(|d| small.iter().filter(|f| folder(f) == *d).count() == 1)
        .collect();
    assert!(
        merged
            .iter()
            .all(|f| f.contains("/compacted-") || single.contains(&folder(f))),
        "{merged:?}"
    );
    // Within the retention the replaced files are still there, just not valid.
    assert!(physical(&lake).await.len() > merged.len() + small.len() / 2);

    // Again: nothing left to merge.
    let again = compact::compact_closed(&lake, cut, &keep).await.unwrap();
    assert!(again.is_empty(), "{again:?}");

    // Past the retention, vacuum deletes the replaced files and the orphan; rows unchanged.
    compact::vacuum(&lake, Duration::ZERO).await.unwrap();
    assert_eq!(physical(&lake).await, merged, "only merged files remain");
    assert_matches(&summarize(&lake).await.unwrap(), &sc);

    // Merged valid-table files are sorted by the coarse cell, so hex filters prune.
    for f in merged.iter().filter(|f| f.starts_with("heartbeat/")) {
        for b in decode_parquet(lake.get(f).await.unwrap().unwrap(), Some(&["h3_r8"])).unwrap() {
            let c = b.column(0).as_primitive::<UInt64Type>();
            assert!(c.values().windows(2).all(|w| w[0] <= w[1]), "{f} sorted");
        }
    }

    // A new consumer group replays the topic from the start: the txn versions in the log fence every
    // offset.
    let mut replay = cfg.clone();
    replay.group_id = format!("{}-g2", kafka.raw_topic);
    run_processor(replay, &kafka, &registry, &url).await;
    assert_eq!(valid(&lake).await, merged, "a replay writes no new files");
    assert_matches(&summarize(&lake).await.unwrap(), &sc);
}
