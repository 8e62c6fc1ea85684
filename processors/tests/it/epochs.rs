//! Epoch sealing: deterministic bytes whatever the files and partitions, proofs that fail on
//! tampering, and late data before and after a seal (through the real broker).

use std::time::Duration;

use hexpulse_common::registry::Registry;
use hexpulse_lake::compact::{self, CompactOptions};
use hexpulse_lake::epoch::compute::{SealMemory, compute, epoch_files, epoch_inputs};
use hexpulse_lake::epoch::seal::{self, SealRequest, Sealed};
use hexpulse_lake::epoch::{EpochConfig, EpochError};
use hexpulse_lake::rules::Rules;
use hexpulse_lake::{COMPACTED_ZSTD_LEVEL, Lake, encode_parquet};
use hexpulse_processors::ProcessConfig;
use hexpulse_rewards::merkle;
use hexpulse_schemas::tables;
use hexpulse_testkit::scenario::{self, Fate, Scenario};
use hexpulse_testkit::testenv;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use tokio_util::sync::CancellationToken;

use crate::support::*;

const TOPIC: &str = "raw-readings";

fn day_epochs() -> EpochConfig {
    EpochConfig {
        length: Duration::from_secs(86_400),
        origin: "2026-01-01T00:00:00Z".into(),
        ..EpochConfig::default()
    }
}

async fn seal_forced(lake: &Lake, out: &Lake, cfg: &EpochConfig, rules: &Rules, id: i64) -> Sealed {
    seal::seal(SealRequest {
        input: lake,
        output: out,
        cfg,
        rules,
        epoch: id,
        force: true,
        topic: TOPIC,
        partitions: 1,
    })
    .await
    .unwrap()
}

async fn output_bytes(lake: &Lake, m: &seal::Manifest) -> Vec<(String, bytes::Bytes)> {
    let mut v = Vec::new();
    for o in &m.outputs {
        v.push((o.table.clone(), lake.get(&o.path).await.unwrap().unwrap()));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealing_is_byte_identical_across_files_partitions_and_compaction() {
    let now = yesterday_noon();
    let sc = scenario::build(now, 30);
    let cfg = day_epochs();
    let rules = Rules::load(None).unwrap();
    let id = cfg.id_of(now - 30_000).unwrap();

    let a_dir = write_lake(&sc, now, 2, 37).await;
    let b_dir = write_lake(&sc, now, 5, 11).await;
    let a = Lake::open(a_dir.path().to_str().unwrap()).unwrap();
    let b = Lake::open(b_dir.path().to_str().unwrap()).unwrap();
    assert_ne!(
        compact::valid_files(&a, "heartbeat").await.unwrap(),
        compact::valid_files(&b, "heartbeat").await.unwrap(),
        "the two lakes hold different files"
    );

    let ma = seal_forced(&a, &a, &cfg, &rules, id).await;
    let mb = seal_forced(&b, &b, &cfg, &rules, id).await;
    let (ma, mb) = (ma.manifest().clone(), mb.manifest().clone());
    assert!(
        ma.forced,
        "no watermarks: sealing needed --force, and says so"
    );
    assert!(ma.merkle_leaves >= 10, "{} devices", ma.merkle_leaves);
    assert_eq!(ma.merkle_root, mb.merkle_root);
    assert_eq!(
        ma.outputs, mb.outputs,
        "same files, lengths, rows and SHA-256"
    );
    assert_eq!(output_bytes(&a, &ma).await, output_bytes(&b, &mb).await);
    assert_ne!(ma.inputs, mb.inputs, "the inputs differ in partitioning");

    // Every output names its rules in its footer.
    for o in &ma.outputs {
        let bytes = a.get(&o.path).await.unwrap().unwrap();
        let meta = parquet::file::metadata::ParquetMetaDataReader::new()
            .parse_and_finish(&bytes)
            .unwrap();
        let kv = meta.file_metadata().key_value_metadata().unwrap();
        assert!(
            kv.iter().any(|k| k.key == "hexpulse.rules_hash"
                && k.value.as_deref() == Some(rules.hash.as_str())),
            "{} carries the rules hash",
            o.path
        );
    }

    // Shuffled input files give the same bytes (the helper writes the same footer metadata), and
    // so does a seal with 16 KiB of memory, whose rows go through temporary files in many buckets.
    let mut files = epoch_files(&a, &cfg, &rules, id).await.unwrap();
    files.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(7));
    let memory = SealMemory { bytes: 16 << 10 };
    let c = compute(&a, &cfg, &rules, id, &files, memory).await.unwrap();
    assert!(
        c.buckets > 10 && c.spilled_bytes > 0,
        "{} buckets, {} bytes spilled",
        c.buckets,
        c.spilled_bytes
    );
    let t = c.tables;
    for (table, e) in [
        (tables::DEVICE_SUMMARY_TABLE, &t.device_summary),
        ("hex_coverage", &t.hex_coverage),
        ("sensor_hex_hourly", &t.sensor_hex_hourly),
        ("road_hex", &t.road_hex),
    ] {
        assert_eq!(
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&e.bytes)),
            ma.output(table).unwrap().sha256,
            "{table}: the same bytes"
        );
    }
    assert_eq!(hex::encode(merkle::root(&t.leaves)), ma.merkle_root);

    // After compaction (other files, same rows), a re-run into another folder is identical too.
    compact::compact_closed(
        &a,
        now + 3 * 3_600_000,
        &CompactOptions {
            retention: Duration::ZERO,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = Lake::open(out_dir.path().to_str().unwrap()).unwrap();
    let mc = seal_forced(&a, &out, &cfg, &rules, id).await;
    assert!(matches!(mc, Sealed::New(_)));
    assert_eq!(mc.manifest().outputs, ma.outputs);
    assert_eq!(mc.manifest().merkle_root, ma.merkle_root);

    // Sealing again is a no-op that returns the existing manifest.
    assert!(matches!(
        seal_forced(&a, &a, &cfg, &rules, id).await,
        Sealed::Already(m) if m == ma
    ));

    // Other rules: a different result in another folder, and the sealed epoch untouched.
    let other_text = scenario_rules_with_double_hour_points();
    let other = Rules::parse(&other_text).unwrap();
    let rerun_dir = tempfile::tempdir().unwrap();
    let rerun = Lake::open(rerun_dir.path().to_str().unwrap()).unwrap();
    let mr = seal_forced(&a, &rerun, &cfg, &other, id).await;
    assert_ne!(mr.manifest().merkle_root, ma.merkle_root);
    assert_eq!(mr.manifest().rules_hash, other.hash);
    let d = seal::diff(&a, &rerun, id).await.unwrap();
    assert!(!d.is_empty());
    assert!(
        d.iter().all(|x| x.points_b.unwrap() >= x.points_a.unwrap()),
        "doubling hour points never lowers a reward: {d:?}"
    );
    assert_eq!(seal::read_manifest(&a, id).await.unwrap().unwrap(), ma);
}

fn scenario_rules_with_double_hour_points() -> String {
    hexpulse_lake::rules::DEFAULT_RULES
        .replace("heartbeat_hour_points = 100", "heartbeat_hour_points = 200")
        .replace("version = \"2026.11.3\"", "version = \"test-double\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_verifies_against_the_manifest_and_tampering_fails() {
    let now = yesterday_noon();
    let sc = scenario::build(now, 10);
    let cfg = day_epochs();
    let rules = Rules::load(None).unwrap();
    let id = cfg.id_of(now - 30_000).unwrap();
    let dir = write_lake(&sc, now, 3, 25).await;
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let m = seal_forced(&lake, &lake, &cfg, &rules, id)
        .await
        .manifest()
        .clone();

    let device = match &sc.records[0].fate {
        Fate::Valid { key, .. } => key.clone(),
        f => panic!("first record is {f:?}"),
    };
    let proof = seal::build_proof(&lake, id, &device).await.unwrap();
    proof.verify(&m.merkle_root).unwrap();
    // The proof survives a JSON round trip (what `hexpulse epoch proof` prints).
    let back: seal::Proof =
        serde_json::from_str(&serde_json::to_string_pretty(&proof).unwrap()).unwrap();
    back.verify(&m.merkle_root).unwrap();

    // A changed row, a changed path, or another root: all refused.
    let mut t = proof.clone();
    let pts = t.row["reward_points"].as_u64().unwrap();
    t.row.insert("reward_points".into(), (pts + 1).into());
    assert!(t.verify(&m.merkle_root).is_err());
    let mut t = proof.clone();
    t.row.insert("heartbeats".into(), 999.into());
    assert!(t.verify(&m.merkle_root).is_err());
    let mut t = proof.clone();
    t.path[0].hash = "00".repeat(32);
    assert!(t.verify(&m.merkle_root).is_err());
    assert!(proof.verify(&"11".repeat(32)).is_err());

    // Tampering with the sealed file itself: a proof can no longer be built from it.
    let path = &m.output(tables::DEVICE_SUMMARY_TABLE).unwrap().path;
    let batch = seal::read_output(&lake, &m, tables::DEVICE_SUMMARY_TABLE)
        .await
        .unwrap();
    let mut cols = batch.columns().to_vec();
    let idx = batch.schema().index_of("reward_points").unwrap();
    let mut v: Vec<u64> =
        arrow::array::AsArray::as_primitive::<arrow::datatypes::UInt64Type>(cols[idx].as_ref())
            .values()
            .to_vec();
    v[0] += 1000;
    cols[idx] = std::sync::Arc::new(arrow::array::UInt64Array::from(v));
    let tampered = arrow::array::RecordBatch::try_new(batch.schema(), cols).unwrap();
    lake.put(
        path,
        encode_parquet(&tampered, COMPACTED_ZSTD_LEVEL).unwrap(),
    )
    .await
    .unwrap();
    let err = seal::build_proof(&lake, id, &device).await.unwrap_err();
    assert!(err.to_string().contains("SHA-256"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_data_lands_in_its_epoch_until_the_seal_and_is_late_after() {
    let Some(brokers) = testenv::broker_or_skip("late_data_and_the_seal") else {
        return;
    };
    let now = now_ms();
    let cfg = EpochConfig {
        length: Duration::from_secs(600),
        origin: "2026-01-01T00:00:00Z".into(),
        ..EpochConfig::default()
    };
    // The previous 10-minute epoch has ended, but its lateness (2 h) has not passed.
    let id = cfg.id_of(now).unwrap() - 1;
    let (_, end) = cfg.bounds(id).unwrap();
    // The scenario's valid heartbeats of its regular devices (not the rate-limit device, whose
    // readings sit ten minutes earlier, in another epoch).
    let heartbeats = |sc: Scenario, per_device: usize| {
        let key_of = |r: &scenario::ScenarioRecord| match &r.fate {
            Fate::Valid {
                kind: hexpulse_schemas::wire::KindName::Heartbeat,
                key,
                ..
            } => Some(key.clone()),
            _ => None,
        };
        let mut counts = std::collections::HashMap::new();
        for k in sc.records.iter().filter_map(key_of) {
            *counts.entry(k).or_insert(0usize) += 1;
        }
        Scenario {
            records: sc
                .records
                .iter()
                .filter(|r| key_of(r).is_some_and(|k| counts[&k] == per_device))
                .cloned()
                .collect(),
            devices: sc.devices,
        }
    };
    // Readings from about a minute before the epoch's end, received now: late, but within the
    // lateness.
    let first = heartbeats(scenario::build(end - 5_000, 20), 20);
    assert!(first.records.len() >= 60);
    let kafka = kafka(&brokers, "it-epoch-late", 2);
    produce(&kafka, &first, now).await;

    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().to_str().unwrap().to_string();
    let registry = Registry::from_devices(first.devices.clone()).unwrap();
    let mut pcfg = ProcessConfig::for_tests(&url);
    pcfg.group_id = format!("{}-g", kafka.raw_topic);
    pcfg.epoch = cfg.clone();
    let stop = CancellationToken::new();
    let p = hexpulse_processors::run::start(
        pcfg,
        kafka.clone(),
        registry,
        Lake::open(&url).unwrap(),
        stop.clone(),
    )
    .await
    .unwrap();
    let lake = Lake::open(&url).unwrap();
    let s = wait_for(&lake, first.records.len(), Duration::from_secs(60)).await;
    assert_eq!(
        s.valid.len(),
        first.records.len(),
        "late-but-allowed readings are valid"
    );

    // Not complete: the watermarks are far from the end plus two hours.
    let rules = Rules::load(None).unwrap();
    let req = |force| SealRequest {
        input: &lake,
        output: &lake,
        cfg: &cfg,
        rules: &rules,
        epoch: id,
        force,
        topic: &kafka.raw_topic,
        partitions: 2,
    };
    let err = seal::seal(req(false)).await.unwrap_err();
    assert!(
        matches!(&err, EpochError::NotReady(m) if m.contains("watermark")),
        "{err}"
    );
    // #20.16: an epoch that has not ended cannot be sealed, not even forced.
    let now = hexpulse_lake::now_ms();
    let open = cfg.id_of(now).unwrap();
    for future in [open, open + 1, i64::MAX / 2] {
        let err = seal::seal(SealRequest {
            epoch: future,
            ..req(true)
        })
        .await
        .unwrap_err();
        assert!(
            matches!(&err, EpochError::NotReady(_) | EpochError::Invalid(_)),
            "epoch {future}: {err}"
        );
    }
    let m = seal::seal(req(true)).await.unwrap().manifest().clone();
    assert!(m.forced);
    let summary = seal::read_output(&lake, &m, tables::DEVICE_SUMMARY_TABLE)
        .await
        .unwrap();
    let hb = arrow::array::AsArray::as_primitive::<arrow::datatypes::UInt64Type>(
        summary.column_by_name("heartbeats").unwrap().as_ref(),
    )
    .values()
    .iter()
    .sum::<u64>();
    assert_eq!(
        hb as usize,
        first.records.len(),
        "the late readings are in their epoch"
    );

    // The processor learns of the seal; more readings of that epoch are now `late`.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = heartbeats(scenario::build(end - 5_000, 25), 25);
    let extra: Vec<_> = second
        .records
        .into_iter()
        .filter(|r| !first.records.iter().any(|f| f.value == r.value))
        .collect();
    let second = Scenario {
        records: extra,
        devices: second.devices,
    };
    produce(&kafka, &second, now_ms()).await;
    let s = wait_for(
        &lake,
        first.records.len() + second.records.len(),
        Duration::from_secs(60),
    )
    .await;
    stop.cancel();
    p.task.await.unwrap().unwrap();
    let late: Vec<_> = s.rejected.iter().filter(|r| r.1 == "late").collect();
    assert_eq!(
        late.len(),
        second.records.len(),
        "every post-seal reading is late"
    );
    assert_eq!(s.valid.len(), first.records.len());

    // The sealed epoch did not change: same manifest, every file still matches its SHA-256.
    assert_eq!(seal::read_manifest(&lake, id).await.unwrap().unwrap(), m);
    for t in [
        "device_summary",
        "hex_coverage",
        "sensor_hex_hourly",
        "road_hex",
    ] {
        seal::read_output(&lake, &m, t).await.unwrap();
    }
    assert!(matches!(
        seal::seal(req(true)).await.unwrap(),
        Sealed::Already(_)
    ));
}

/// Lake files from before a column was added (here `asserted_distance_m`) still seal: the missing
/// distance is left out of the median instead of stopping the sealer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_written_before_a_column_existed_still_seal() {
    use arrow::array::Array;
    let now = yesterday_noon();
    let sc = scenario::build(now, 10);
    let cfg = day_epochs();
    let rules = Rules::load(None).unwrap();
    let id = cfg.id_of(now - 30_000).unwrap();
    let dir = write_lake(&sc, now, 2, 25).await;
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let mut rewritten = 0;
    for table in ["heartbeat", "sensor"] {
        for path in compact::valid_files(&lake, table).await.unwrap() {
            let bytes = lake.get(&path).await.unwrap().unwrap();
            let batches = hexpulse_lake::decode_parquet(bytes, None).unwrap();
            let b = &batches[0];
            let keep: Vec<usize> = (0..b.num_columns())
                .filter(|i| b.schema().field(*i).name() != "asserted_distance_m")
                .collect();
            let old = b.project(&keep).unwrap();
            assert!(old.column_by_name("asserted_distance_m").is_none());
            lake.put(&path, encode_parquet(&old, 1).unwrap())
                .await
                .unwrap();
            rewritten += 1;
        }
    }
    assert!(rewritten > 0);
    let m = seal_forced(&lake, &lake, &cfg, &rules, id)
        .await
        .manifest()
        .clone();
    assert!(m.merkle_leaves > 0);
    let summary = seal::read_output(&lake, &m, tables::DEVICE_SUMMARY_TABLE)
        .await
        .unwrap();
    let dist = summary.column_by_name("median_distance_m").unwrap();
    let heartbeats = summary.column_by_name("heartbeats").unwrap();
    let hb = arrow::compute::cast(heartbeats, &arrow::datatypes::DataType::UInt64).unwrap();
    let hb = hb
        .as_any()
        .downcast_ref::<arrow::array::UInt64Array>()
        .unwrap();
    for i in 0..summary.num_rows() {
        if hb.value(i) > 0 {
            assert!(dist.is_null(i), "no distance without the column");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reseal_at_the_pinned_versions_is_byte_identical_after_late_rows() {
    let now = yesterday_noon();
    let sc = scenario::build(now, 10);
    let cfg = day_epochs();
    let rules = Rules::load(None).unwrap();
    let id = cfg.id_of(now - 30_000).unwrap();
    let dir = write_lake(&sc, now, 2, 25).await;
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let sealed = seal_forced(&lake, &lake, &cfg, &rules, id).await;
    let m = sealed.manifest().clone();
    assert_eq!(
        m.input_versions.keys().collect::<Vec<_>>(),
        ["heartbeat", "rejected", "road", "sensor"],
        "every input table's version is pinned"
    );
    let before = output_bytes(&lake, &m).await;

    // More rows of the same epoch arrive after the seal (here: another topic's records).
    let late = scenario::build(now, 8);
    write_into(&lake, &late, now, 1, 25, "late-readings").await;
    let (pinned, _) = epoch_inputs(&lake, &cfg, &rules, id, Some(&m.input_versions))
        .await
        .unwrap()
        .clone();
    let (newest, versions) = epoch_inputs(&lake, &cfg, &rules, id, None).await.unwrap();
    assert!(
        newest.len() > pinned.len(),
        "the late rows are in newer versions: {} files now, {} pinned",
        newest.len(),
        pinned.len()
    );
    assert!(versions.iter().all(|(t, v)| *v > m.input_versions[t]));
    // Compaction replaces the files the seal read, and vacuum runs with no retention: it keeps
    // what the pinned versions reference.
    let done = compact::compact_closed(&lake, now + 3 * 3_600_000, &CompactOptions::default())
        .await
        .unwrap();
    assert!(!done.is_empty());
    compact::vacuum(&lake, Duration::ZERO).await.unwrap();
    for f in &pinned {
        assert!(
            lake.get(&f.path).await.unwrap().is_some(),
            "{}: {} kept",
            f.table,
            f.path
        );
    }
    // The log is cleaned up to a checkpoint at the newest version, with no retention: the pinned
    // versions get checkpoints of their own, and nothing else before the newest stays.
    compact::checkpoint(&lake, 1).await.unwrap();
    let deleted = compact::clean_log(&lake, Duration::ZERO).await.unwrap();
    assert!(deleted > 0, "expired log entries deleted");
    for (table, version) in &m.input_versions {
        let log = lake.list(&format!("{table}/_delta_log/")).await.unwrap();
        assert!(
            !log.iter()
                .any(|p| p.ends_with(&format!("{version:020}.json"))),
            "{table}: the pinned commit itself is gone: {log:?}"
        );
        assert!(
            log.iter()
                .any(|p| p.contains(&format!("{version:020}.checkpoint"))),
            "{table}: pinned version {version} has its checkpoint: {log:?}"
        );
    }
    let fresh = Lake::open(dir.path().to_str().unwrap()).unwrap();
    for table in compact::tables() {
        assert_eq!(
            compact::valid_files(&fresh, table).await.unwrap(),
            compact::valid_files(&lake, table).await.unwrap(),
            "{table}: a fresh reader opens the newest snapshot from the checkpoint"
        );
    }

    // A re-seal into another folder reads the pinned versions: the same bytes.
    let out_dir = tempfile::tempdir().unwrap();
    let out = Lake::open(out_dir.path().to_str().unwrap()).unwrap();
    let again = seal_forced(&lake, &out, &cfg, &rules, id).await;
    assert!(matches!(again, Sealed::New(_)));
    assert_eq!(again.manifest().input_versions, m.input_versions);
    assert_eq!(again.manifest().outputs, m.outputs);
    assert_eq!(again.manifest().merkle_root, m.merkle_root);
    assert_eq!(output_bytes(&out, again.manifest()).await, before);
}

/// Two sealers race over one epoch: the second looked before the first's manifest appeared, and
/// reads newer input versions (late rows arrived in between). The manifest that wins keeps
/// exactly the bytes it lists (outputs are named by content, never overwritten), the loser's own
/// outputs are deleted, and publishing adds the winner's files only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_sealers_never_overwrite_the_winning_outputs() {
    use hexpulse_lake::epoch::publish::{self, EPOCH_TABLES};
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    let now = yesterday_noon();
    let cfg = day_epochs();
    let rules = Rules::load(None).unwrap();
    let id = cfg.id_of(now - 30_000).unwrap();
    let dir = write_lake(&scenario::build(now, 10), now, 2, 25).await;
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let first = seal_forced(&lake, &lake, &cfg, &rules, id).await;
    let won = first.manifest().clone();
    let before = output_bytes(&lake, &won).await;
    write_into(&lake, &scenario::build(now, 8), now, 1, 25, "late-readings").await;

    // The late sealer: both of its manifest checks (output, then input lake) find nothing.
    let late = Arc::new(crate::faulty::Flaky::new(lake.store().clone()));
    late.hide_manifests.store(2, Ordering::SeqCst);
    let seen = Lake::from_store(late.clone());
    let second = seal_forced(&seen, &seen, &cfg, &rules, id).await;
    assert_eq!(
        late.hide_manifests.load(Ordering::SeqCst),
        0,
        "both checks were fooled"
    );
    assert!(
        late.writes.load(Ordering::SeqCst) >= 4,
        "the late sealer wrote its outputs"
    );
    let Sealed::Already(stands) = second else {
        panic!("the late sealer's manifest must lose: {second:?}");
    };
    assert_eq!(stands, won);
    // Every output the winning manifest lists has its bytes (read_output checks the SHA-256).
    assert!(
        output_bytes(&lake, &won).await == before,
        "the winner's outputs were overwritten"
    );
    for table in EPOCH_TABLES {
        seal::read_output(&lake, &won, table).await.unwrap();
        let files = lake
            .list(&format!("{}/", publish::table_root(table)))
            .await
            .unwrap();
        assert_eq!(
            files,
            [won.output(table).unwrap().path.clone()],
            "{table}: only the winner's output is left"
        );
    }
    assert_eq!(publish::publish_sealed(&lake).await.unwrap(), 4);
    for table in EPOCH_TABLES {
        let (_, files) = lake
            .table(&publish::table_root(table))
            .files()
            .await
            .unwrap();
        let paths: Vec<_> = files.into_iter().map(|f| f.path).collect();
        assert_eq!(paths, [won.output(table).unwrap().path.clone()], "{table}");
    }
}

/// Finding 15 of round two: a heartbeat backdated into earlier hours (within the allowed lateness)
/// makes no hour active. An hour is active only by a reading received in it, so a device that sends
/// one burst with claimed times across three hours earns one active hour, and a device heard in two
/// hours earns two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backdated_readings_make_no_active_hours() {
    use arrow::array::AsArray;
    use arrow::datatypes::{UInt32Type, UInt64Type};
    use hexpulse_common::registry::Device;
    use hexpulse_lake::epoch::publish::EPOCH_TABLES;
    use hexpulse_load_tests::fleet::{device_key, sign_reading};
    use hexpulse_processors::h3bin::Binner;
    use hexpulse_processors::partition::PartitionWorker;
    use hexpulse_processors::validate::Validator;
    use hexpulse_schemas::wire::KindName;
    use prost::Message;

    const MIN: i64 = 60_000;
    let now = yesterday_noon();
    let cfg = day_epochs();
    let rules = Rules::load(None).unwrap();
    let (backdater, honest) = (device_key(77, 0), device_key(77, 1));
    let at = (52.52, 13.405);
    let registry = Registry::from_devices(
        [&backdater, &honest]
            .iter()
            .map(|k| Device {
                public_key: hex::encode(k.verifying_key().as_bytes()),
                kind: KindName::Heartbeat,
                lat: at.0,
                lng: at.1,
                owner: "test".into(),
            })
            .collect(),
    )
    .unwrap();
    let heartbeat = |seq: u64, t: i64| scenario::reading(seq, t, at, scenario::heartbeat());
    // (device, reading, receive time). `now` is 12:00:00 UTC.
    let burst = now + 30_000;
    let records = [
        // One burst received at 12:00:30, claiming 10:01, 10:59, 11:59 and 12:00.
        (&backdater, heartbeat(1, burst - 119 * MIN), burst),
        (&backdater, heartbeat(2, burst - 61 * MIN), burst),
        (&backdater, heartbeat(3, burst - MIN), burst),
        (&backdater, heartbeat(4, burst - 10_000), burst),
        // Heard at 11:30 and at 12:00:30.
        (
            &honest,
            heartbeat(1, now - 30 * MIN - 1_000),
            now - 30 * MIN,
        ),
        (&honest, heartbeat(2, burst - 1_000), burst),
    ];
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let mut w = PartitionWorker::init(
        TOPIC,
        0,
        now - 30 * MIN,
        lake.clone(),
        Validator::new(rules.clone(), registry, true),
        Binner::new(&[12, 8]).unwrap(),
        vec![12, 8],
    )
    .await
    .unwrap();
    for (offset, (key, reading, received)) in records.iter().enumerate() {
        let value = sign_reading(key, reading).encode_to_vec();
        w.push(offset as i64, &value, *received);
    }
    w.flush(&rules.version).await.unwrap();

    let id = cfg.id_of(now).unwrap();
    let sealed = seal_forced(&lake, &lake, &cfg, &rules, id).await;
    let summary = seal::read_output(&lake, sealed.manifest(), EPOCH_TABLES[0])
        .await
        .unwrap();
    let col = |name: &str| summary.column_by_name(name).unwrap().clone();
    let keys = col("device_key");
    let keys = keys.as_string::<i32>();
    let heartbeats = col("heartbeats");
    let hours = col("active_hours");
    let row_of = |k: &ed25519_dalek::SigningKey| {
        let hex = hex::encode(k.verifying_key().as_bytes());
        keys.iter()
            .position(|v| v == Some(hex.as_str()))
            .expect("device summarised")
    };
    let (b, h) = (row_of(&backdater), row_of(&honest));
    assert_eq!(
        heartbeats.as_primitive::<UInt64Type>().value(b),
        4,
        "all four are valid"
    );
    assert_eq!(
        hours.as_primitive::<UInt32Type>().value(b),
        1,
        "one burst, received in one hour: one active hour, whatever times it claims"
    );
    assert_eq!(hours.as_primitive::<UInt32Type>().value(h), 2);
}
