//! Two workers on one partition at once: one pauses with a unit in its buffer, the group moves the
//! partition to the other, which commits past it; the paused one then resumes. The Delta log fences
//! it, and no (partition, offset) is ever in two files.

use hexpulse_common::registry::Registry;
use hexpulse_lake::Lake;
use hexpulse_lake::rules::Rules;
use hexpulse_processors::h3bin::Binner;
use hexpulse_processors::partition::{Flushed, PartitionWorker};
use hexpulse_processors::validate::Validator;
use hexpulse_testkit::inspect::summarize;
use hexpulse_testkit::scenario;

use crate::support::*;

async fn worker(lake: &Lake, registry: &Registry, now: i64) -> PartitionWorker {
    let rules = Rules::load(None).unwrap();
    PartitionWorker::init(
        "zombie-readings",
        0,
        now,
        lake.clone(),
        Validator::new(rules, registry.clone(), true),
        Binner::new(&[12, 8]).unwrap(),
        vec![12, 8],
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_resuming_after_a_rebalance_is_fenced_and_writes_nothing_twice() {
    let now = now_ms();
    let sc = scenario::build(now, 12);
    let n = sc.records.len() as i64;
    assert!(n > 40, "{n} records");
    let registry = Registry::from_devices(sc.devices.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().to_str().unwrap();
    let version = Rules::load(None).unwrap().version;
    // Separate handles, as separate processes would have.
    let (lake_a, lake_b) = (Lake::open(url).unwrap(), Lake::open(url).unwrap());

    // A takes the partition, reads the first 20 records and pauses before flushing them.
    let mut a = worker(&lake_a, &registry, now).await;
    for (i, r) in sc.records.iter().take(20).enumerate() {
        a.push(i as i64, &r.value, now);
    }
    // The group gives the partition to B, which reads from the start and commits two units.
    let mut b = worker(&lake_b, &registry, now).await;
    assert_eq!(b.next_offset(), 0);
    for (i, r) in sc.records.iter().take(30).enumerate() {
        b.push(i as i64, &r.value, now);
        if i == 14 {
            assert!(matches!(
                b.flush(&version).await.unwrap(),
                Flushed::Committed { .. }
            ));
        }
    }
    assert!(matches!(
        b.flush(&version).await.unwrap(),
        Flushed::Committed {
            next_offset: 30,
            ..
        }
    ));

    // A resumes: its unit [0, 19] loses at the gate, and it learns where the chain goes on.
    assert_eq!(
        a.flush(&version).await.unwrap(),
        Flushed::Fenced { next_offset: 30 }
    );
    // Taking the partition back, A goes on from there.
    let mut a = worker(&lake_a, &registry, now).await;
    assert_eq!(a.next_offset(), 30);
    for (i, r) in sc.records.iter().enumerate().skip(30) {
        a.push(i as i64, &r.value, now);
    }
    assert!(matches!(
        a.flush(&version).await.unwrap(),
        Flushed::Committed { .. }
    ));

    let s = summarize(&Lake::open(url).unwrap()).await.unwrap();
    assert_eq!(s.distinct_records() as i64, n, "every record once");
    // Sensor readings make several rows with one provenance; rows of other kinds and rejections
    // are one per record: none of those appears twice.
    let mut single: Vec<(i32, i64)> = s
        .valid
        .iter()
        .filter(|v| v.0 != "sensor")
        .map(|v| (v.3, v.4))
        .chain(s.rejected.iter().map(|r| (r.2, r.3)))
        .collect();
    let before = single.len();
    single.sort_unstable();
    single.dedup();
    assert_eq!(single.len(), before, "no record in two files");
}
