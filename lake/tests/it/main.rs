//! The lake's protocols on a real local directory: units fence each other through the Delta log, an
//! interrupted unit is completed from its intent, and compaction keeps every snapshot exact.

use std::sync::Arc;

use arrow::array::{Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use hexpulse_lake::unit::{self, STREAM_TABLES, Unit, UnitFile, UnitOutcome};
use hexpulse_lake::{Lake, compact, decode_parquet, encode_parquet, stats};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("src_partition", DataType::Int32, false),
        Field::new("src_offset", DataType::Int64, false),
        Field::new("note", DataType::Utf8, false),
    ]))
}

fn file(table: &'static str, partition: i32, offsets: std::ops::RangeInclusive<i64>) -> UnitFile {
    let offsets: Vec<i64> = offsets.collect();
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int32Array::from(vec![partition; offsets.len()])),
            Arc::new(Int64Array::from(offsets.clone())),
            Arc::new(StringArray::from(vec![table; offsets.len()])),
        ],
    )
    .unwrap();
    UnitFile {
        table,
        date: "2026-11-30".into(),
        hour: 6,
        bytes: encode_parquet(&batch, 1).unwrap(),
        stats: stats::stats_json(&batch),
    }
}

/// Every (table, partition, offset) in the newest snapshots.
async fn rows(lake: &Lake) -> Vec<(String, i32, i64)> {
    let mut out = Vec::new();
    for t in STREAM_TABLES {
        for path in compact::valid_files(lake, t).await.unwrap() {
            let bytes = lake.get(&path).await.unwrap().unwrap();
            for b in decode_parquet(bytes, None).unwrap() {
                let p = b.column(0).as_any().downcast_ref::<Int32Array>().unwrap();
                let o = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
                for i in 0..b.num_rows() {
                    out.push((t.to_string(), p.value(i), o.value(i)));
                }
            }
        }
    }
    out.sort();
    out
}

fn unit_of<'a>(writer: &'a str, start: i64, end: i64, files: Vec<UnitFile>) -> Unit<'a> {
    Unit {
        topic: "t",
        partition: 0,
        start,
        end,
        writer,
        files,
    }
}

#[tokio::test]
async fn a_second_writer_on_the_same_offsets_is_fenced_and_resume_finds_the_chain_end() {
    let dir = tempfile::tempdir().unwrap();
    let a = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let b = Lake::open(dir.path().to_str().unwrap()).unwrap();
    unit::ensure_tables(&a, |_| schema()).await.unwrap();
    assert_eq!(unit::resume(&a, "t", 0).await.unwrap(), 0);

    let first = unit_of(
        "a",
        0,
        9,
        vec![file("heartbeat", 0, 0..=5), file("rejected", 0, 6..=9)],
    );
    assert_eq!(
        unit::commit_unit(&a, first).await.unwrap(),
        UnitOutcome::Committed
    );
    // A zombie that started from offset 0 too loses, and learns where the chain goes on.
    let zombie = unit_of("b", 0, 12, vec![file("heartbeat", 0, 0..=12)]);
    assert_eq!(
        unit::commit_unit(&b, zombie).await.unwrap(),
        UnitOutcome::Fenced { next_offset: 10 }
    );
    assert_eq!(unit::resume(&b, "t", 0).await.unwrap(), 10);
    let next = unit_of("b", 10, 12, vec![file("sensor", 0, 10..=12)]);
    assert_eq!(
        unit::commit_unit(&b, next).await.unwrap(),
        UnitOutcome::Committed
    );
    // The first writer's handle has not seen b's commit: its next unit is fenced by the log.
    let stale = unit_of("a", 10, 20, vec![file("road", 0, 10..=20)]);
    assert_eq!(
        unit::commit_unit(&a, stale).await.unwrap(),
        UnitOutcome::Fenced { next_offset: 13 }
    );

    let r = rows(&a).await;
    let mut offsets: Vec<i64> = r.iter().map(|x| x.2).collect();
    offsets.sort();
    assert_eq!(offsets, (0..=12).collect::<Vec<_>>(), "{r:?}");
    // Every stream table's txn version followed the chain.
    for t in STREAM_TABLES {
        assert_eq!(
            a.table(t).txn_version(&unit::app_id("t", 0)).await.unwrap(),
            Some(12),
            "{t}"
        );
    }
    // Fenced writers' files are gone; only committed files are on disk.
    let on_disk: usize = {
        let mut n = 0;
        for t in STREAM_TABLES {
            n += a
                .list(t)
                .await
                .unwrap()
                .iter()
                .filter(|p| p.ends_with(".parquet") && !p.contains("_delta_log"))
                .count();
        }
        n
    };
    assert_eq!(on_disk, 3);
}

#[tokio::test]
async fn a_unit_interrupted_after_its_gate_commit_is_completed_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    unit::ensure_tables(&lake, |_| schema()).await.unwrap();
    let u = unit_of(
        "a",
        0,
        9,
        vec![
            file("heartbeat", 0, 0..=3),
            file("sensor", 0, 4..=6),
            file("rejected", 0, 7..=9),
        ],
    );
    assert_eq!(
        unit::commit_unit(&lake, u).await.unwrap(),
        UnitOutcome::Committed
    );
    // Undo the commits after the gate's, as if the writer died between them.
    for t in &STREAM_TABLES[1..] {
        let newest = lake.table(t).latest_version().await.unwrap().unwrap();
        std::fs::remove_file(
            dir.path()
                .join(t)
                .join("_delta_log")
                .join(format!("{newest:020}.json")),
        )
        .unwrap();
    }
    let fresh = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let offsets = |r: Vec<(String, i32, i64)>| r.into_iter().map(|x| x.2).collect::<Vec<_>>();
    assert_eq!(offsets(rows(&fresh).await), vec![0, 1, 2, 3]);
    let unfinished = unit::Chain {
        end: Some(9),
        unfinished: true,
    };
    assert_eq!(unit::chain(&fresh, "t", 0).await.unwrap(), unfinished);
    assert_eq!(unit::resume(&fresh, "t", 0).await.unwrap(), 10);
    let finished = unit::Chain {
        unfinished: false,
        ..unfinished
    };
    assert_eq!(unit::chain(&fresh, "t", 0).await.unwrap(), finished);
    let mut all = offsets(rows(&fresh).await);
    all.sort();
    assert_eq!(all, (0..=9).collect::<Vec<_>>());
    // Resuming again changes nothing.
    assert_eq!(unit::resume(&fresh, "t", 0).await.unwrap(), 10);
    assert_eq!(rows(&fresh).await.len(), 10);
}

/// Commits `n` units of 10 heartbeat rows each (offsets 0..10n) on partition 0.
async fn commit_heartbeat_units(lake: &Lake, n: i64) {
    for i in 0..n {
        let (s, e) = (i * 10, i * 10 + 9);
        let u = unit_of("a", s, e, vec![file("heartbeat", 0, s..=e)]);
        assert_eq!(
            unit::commit_unit(lake, u).await.unwrap(),
            UnitOutcome::Committed
        );
    }
}

#[tokio::test]
async fn compaction_replaces_small_files_in_one_commit_and_racing_compactors_agree() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let other = Lake::open(dir.path().to_str().unwrap()).unwrap();
    unit::ensure_tables(&lake, |_| schema()).await.unwrap();
    commit_heartbeat_units(&lake, 6).await;
    let before = rows(&lake).await;
    assert_eq!(before.len(), 60);
    let opts = compact::CompactOptions::default();
    let (x, y) = tokio::join!(
        compact::compact_hour(&lake, "heartbeat", "2026-11-30", 6, &opts),
        compact::compact_hour(&other, "heartbeat", "2026-11-30", 6, &opts)
    );
    let outcomes = [x.unwrap(), y.unwrap()];
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, compact::Outcome::Compacted { .. }))
            .count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(rows(&lake).await, before);
    assert_eq!(
        compact::valid_files(&lake, "heartbeat")
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        compact::vacuum(&lake, std::time::Duration::ZERO)
            .await
            .unwrap(),
        6
    );
    assert_eq!(rows(&other).await, before);
    compact::checkpoint(&lake, 1).await.unwrap();
    // Checkpoints keep an hour of tombstones, not Delta's default week.
    let created = std::fs::read_to_string(
        dir.path()
            .join("heartbeat/_delta_log/00000000000000000000.json"),
    )
    .unwrap();
    assert!(
        created.contains(&format!(
            "\"delta.deletedFileRetentionDuration\":\"{}\"",
            hexpulse_lake::delta::DELETED_FILE_RETENTION
        )),
        "{created}"
    );
    let reopened = Lake::open(dir.path().to_str().unwrap()).unwrap();
    assert_eq!(rows(&reopened).await, before);
    assert_eq!(unit::resume(&reopened, "t", 0).await.unwrap(), 60);
}

#[tokio::test]
async fn a_merge_takes_no_more_rows_than_its_memory_bound_allows() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    unit::ensure_tables(&lake, |_| schema()).await.unwrap();
    commit_heartbeat_units(&lake, 9).await;
    let before = rows(&lake).await;
    // Room for 30 rows a merge: nine files of 10 rows make three merged files, not one.
    let opts = compact::CompactOptions {
        memory_bytes: 30 * compact::MERGE_ROW_BYTES,
        ..Default::default()
    };
    let outcome = compact::compact_hour(&lake, "heartbeat", "2026-11-30", 6, &opts)
        .await
        .unwrap();
    assert!(
        matches!(
            outcome,
            compact::Outcome::Compacted {
                sources: 9,
                outputs: 3,
                rows: 90,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(rows(&lake).await, before);
    let (_, files) = lake.table("heartbeat").files().await.unwrap();
    assert_eq!(files.len(), 3);
    assert!(files.iter().all(|f| f.rows == Some(30)), "{files:?}");
}

#[tokio::test]
async fn a_flush_retried_after_its_gate_commit_keeps_its_files_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    unit::ensure_tables(&lake, |_| schema()).await.unwrap();
    let files = || vec![file("heartbeat", 0, 0..=4), file("road", 0, 5..=9)];
    assert_eq!(
        unit::commit_unit(&lake, unit_of("a", 0, 9, files()))
            .await
            .unwrap(),
        UnitOutcome::Committed
    );
    // The same writer tries the same unit again (its first attempt failed after the gate commit).
    assert_eq!(
        unit::commit_unit(&lake, unit_of("a", 0, 9, files()))
            .await
            .unwrap(),
        UnitOutcome::Committed
    );
    // Another writer with the same range is fenced, and its files go.
    assert_eq!(
        unit::commit_unit(&lake, unit_of("b", 0, 9, files()))
            .await
            .unwrap(),
        UnitOutcome::Fenced { next_offset: 10 }
    );
    let offsets: Vec<i64> = rows(&lake).await.into_iter().map(|x| x.2).collect();
    assert_eq!(offsets.len(), 10, "{offsets:?}");
    for path in compact::valid_files(&lake, "heartbeat").await.unwrap() {
        assert!(lake.get(&path).await.unwrap().is_some(), "{path} exists");
    }
}

/// The live tier's seam reads a table's files and each partition's committed end in one snapshot,
/// from a handle that followed the commits and from a fresh one alike; a partition first absent and
/// then committed is seen.
#[tokio::test]
async fn files_with_txns_give_each_partition_end_with_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().to_str().unwrap();
    let a = Lake::open(url).unwrap();
    unit::ensure_tables(&a, |_| schema()).await.unwrap();
    let apps = [unit::app_id("t", 0), unit::app_id("t", 1)];
    let (_, files, ends) = a.table("heartbeat").files_with_txns(&apps).await.unwrap();
    assert_eq!((files.len(), ends), (0, vec![None, None]));
    let u = unit_of("a", 0, 9, vec![file("heartbeat", 0, 0..=9)]);
    assert_eq!(
        unit::commit_unit(&a, u).await.unwrap(),
        UnitOutcome::Committed
    );
    for lake in [&a, &Lake::open(url).unwrap()] {
        let (_, files, ends) = lake
            .table("heartbeat")
            .files_with_txns(&apps)
            .await
            .unwrap();
        assert_eq!((files.len(), ends), (1, vec![Some(9), None]));
        // The other tables got the unit's end too, without files.
        let (_, files, ends) = lake.table("road").files_with_txns(&apps).await.unwrap();
        assert_eq!((files.len(), ends), (0, vec![Some(9), None]));
    }
    let b = Lake::open(url).unwrap();
    assert_eq!(
        b.table("heartbeat").files_with_txns(&apps).await.unwrap().2,
        vec![Some(9), None]
    );
    let u = Unit {
        topic: "t",
        partition: 1,
        start: 0,
        end: 4,
        writer: "b",
        files: vec![file("heartbeat", 1, 0..=4)],
    };
    assert_eq!(
        unit::commit_unit(&b, u).await.unwrap(),
        UnitOutcome::Committed
    );
    for lake in [&a, &b] {
        let (_, files, ends) = lake
            .table("heartbeat")
            .files_with_txns(&apps)
            .await
            .unwrap();
        assert_eq!((files.len(), ends), (2, vec![Some(9), Some(4)]));
    }
}
