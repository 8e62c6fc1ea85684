//! The processors' test flow: producing a scenario to a fresh topic, starting processors on it,
//! waiting for the lake to hold it, and writing or sealing lakes directly.

use std::time::Duration;

use crate::inspect::{LakeSummary, summarize};
use crate::scenario::Scenario;
use crate::testenv;
use hexpulse_common::kafka::KafkaConfig;
use hexpulse_common::registry::Registry;
use hexpulse_lake::Lake;
use hexpulse_lake::rules::Rules;
use hexpulse_processors::h3bin::Binner;
use hexpulse_processors::partition::PartitionWorker;
use hexpulse_processors::validate::Validator;
use hexpulse_schemas::wire::envelope;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Noon (UTC) of yesterday, ms: inside a day-long epoch that has ended, for tests that build a lake
/// and seal it (only an ended epoch can be sealed, forced or not).
pub fn yesterday_noon() -> i64 {
    const DAY: i64 = 86_400_000;
    (hexpulse_lake::now_ms().div_euclid(DAY) - 1) * DAY + DAY / 2
}

pub fn kafka(brokers: &str, test: &str, partitions: i32) -> KafkaConfig {
    KafkaConfig {
        envelope_key: None,
        sasl_username: None,
        sasl_password: None,
        brokers: brokers.into(),
        raw_topic: testenv::unique_topic(test),
        partitions,
        replication: 1,
        extra: Default::default(),
    }
}

/// Starts a processor writing to the lake at `url`, in consumer group `group`, knowing `sc`'s devices,
/// with re-verification on (scenarios hold a bad signature). Cancel the token to stop it.
pub async fn start_processor(
    kafka: &KafkaConfig,
    group: &str,
    sc: &Scenario,
    url: &str,
) -> (
    hexpulse_processors::run::Running,
    tokio_util::sync::CancellationToken,
) {
    start_processor_with(kafka, group, sc, url, |_| {}).await
}

/// [`start_processor`], with `tweak` applied to its config.
pub async fn start_processor_with(
    kafka: &KafkaConfig,
    group: &str,
    sc: &Scenario,
    url: &str,
    tweak: impl FnOnce(&mut hexpulse_processors::ProcessConfig),
) -> (
    hexpulse_processors::run::Running,
    tokio_util::sync::CancellationToken,
) {
    let mut cfg = hexpulse_processors::ProcessConfig::for_tests(url);
    cfg.group_id = group.into();
    cfg.reverify_signatures = true;
    tweak(&mut cfg);
    let stop = tokio_util::sync::CancellationToken::new();
    let p = hexpulse_processors::run::start(
        cfg,
        kafka.clone(),
        hexpulse_common::registry::Registry::from_devices(sc.devices.clone()).unwrap(),
        Lake::open(url).unwrap(),
        stop.clone(),
    )
    .await
    .unwrap();
    (p, stop)
}

/// Produces every record of `scenario` with ingest's headers, receive time `now_ms`.
pub async fn produce(kafka: &KafkaConfig, scenario: &Scenario, now_ms: i64) {
    produce_with(&producer(kafka).await, kafka, scenario, now_ms).await;
}

/// A producer for [`produce_with`] (the topic is created first); tests that produce in several steps
/// share one.
pub async fn producer(kafka: &KafkaConfig) -> FutureProducer {
    kafka
        .ensure_topics(&[&kafka.raw_topic])
        .await
        .expect("topic");
    kafka
        .producer_config("scenario", Duration::from_secs(30))
        .create()
        .expect("producer")
}

/// Produces every record of `scenario` through `producer`.
pub async fn produce_with(
    producer: &FutureProducer,
    kafka: &KafkaConfig,
    scenario: &Scenario,
    now_ms: i64,
) {
    let mut pending = Vec::new();
    for r in &scenario.records {
        let value = envelope::encode(now_ms, "scenario", &r.value, None);
        let rec = FutureRecord::to(&kafka.raw_topic)
            .key(&r.key)
            .payload(&value);
        pending.push(
            producer
                .send_result(rec)
                .map_err(|(e, _)| e)
                .expect("enqueue"),
        );
    }
    for p in pending {
        p.await
            .expect("delivery")
            .map_err(|(e, _)| e)
            .expect("acknowledged");
    }
}

/// Waits until the lake holds `records` distinct records (or the deadline passes), then a little
/// longer to catch anything extra.
pub async fn wait_for(lake: &Lake, records: usize, within: Duration) -> LakeSummary {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let s = summarize(lake).await.expect("read lake");
        if s.distinct_records() >= records || tokio::time::Instant::now() >= deadline {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            return summarize(lake).await.expect("read lake");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Compares the lake with the scenario: every valid reading exactly once in its table, every invalid
/// one exactly once in `rejected` with its reason, nothing else.
pub fn assert_matches(s: &LakeSummary, scenario: &Scenario) {
    assert_eq!(
        s.distinct_records(),
        scenario.records.len(),
        "distinct (partition, offset) in the lake"
    );
    // Sensor readings have one row per measurement; reduce to readings.
    let mut valid: Vec<(String, String, u64)> = s
        .valid
        .iter()
        .map(|v| (v.0.clone(), v.1.clone(), v.2))
        .collect();
    let mut sensor_rows = std::collections::BTreeMap::<(String, u64), (usize, (i32, i64))>::new();
    for v in s.valid.iter().filter(|v| v.0 == "sensor") {
        let e = sensor_rows
            .entry((v.1.clone(), v.2))
            .or_insert((0, (v.3, v.4)));
        e.0 += 1;
        assert_eq!(
            e.1,
            (v.3, v.4),
            "a sensor reading's rows share one provenance"
        );
    }
    valid.dedup_by(|a, b| a.0 == "sensor" && a == b);
    valid.sort();
    valid.dedup_by(|a, b| a.0 == "sensor" && a == b);
    assert!(
        sensor_rows.values().all(|(n, _)| *n == 2),
        "two measurements per sensor reading"
    );
    let expected_valid = scenario.expected_valid();
    assert_eq!(valid.len(), expected_valid.len(), "valid readings");
    assert_eq!(valid, expected_valid, "valid readings, exactly once each");
    let mut rejected: Vec<(Vec<u8>, String)> = s
        .rejected
        .iter()
        .map(|r| (r.0.clone(), r.1.clone()))
        .collect();
    rejected.sort();
    assert_eq!(
        rejected.len(),
        scenario.expected_rejected().len(),
        "rejected records"
    );
    assert_eq!(
        rejected,
        scenario.expected_rejected(),
        "rejected with the expected reasons"
    );
}

pub use hexpulse_common::time::now_ms;

/// Writes the scenario into a lake through real partition workers (no Kafka): records go to
/// `partitions` partitions by device key, and units close every `unit` records.
pub async fn write_lake(
    sc: &Scenario,
    now: i64,
    partitions: i32,
    unit: usize,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    write_into(&lake, sc, now, partitions, unit, "raw-readings").await;
    dir
}

/// [`write_lake`] into an existing lake, as the records of `topic`.
pub async fn write_into(
    lake: &Lake,
    sc: &Scenario,
    now: i64,
    partitions: i32,
    unit: usize,
    topic: &str,
) {
    let rules = Rules::load(None).unwrap();
    let registry = Registry::from_devices(sc.devices.clone()).unwrap();
    let mut workers = Vec::new();
    for p in 0..partitions {
        workers.push(
            PartitionWorker::init(
                topic,
                p,
                now,
                lake.clone(),
                Validator::new(rules.clone(), registry.clone(), true),
                Binner::new(&[12, 8]).unwrap(),
                vec![12, 8],
            )
            .await
            .unwrap(),
        );
    }
    let mut next = vec![0i64; partitions as usize];
    for r in &sc.records {
        let p = (r.key.iter().map(|b| *b as usize).sum::<usize>() % partitions as usize) as i32;
        let w = &mut workers[p as usize];
        w.push(next[p as usize], &r.value, now);
        next[p as usize] += 1;
        if w.buffered() >= unit {
            w.flush(&rules.version).await.unwrap();
        }
    }
    for w in &mut workers {
        w.flush(&rules.version).await.unwrap();
    }
}

/// Seals epoch `id` of `input` into `output` under the default rules, forced (lakes written without
/// a broker publish no watermarks).
pub async fn force_seal(
    input: &Lake,
    output: &Lake,
    cfg: &hexpulse_lake::epoch::EpochConfig,
    id: i64,
) -> Result<hexpulse_lake::epoch::seal::Manifest, hexpulse_lake::epoch::EpochError> {
    let rules = Rules::load(None).unwrap();
    hexpulse_lake::epoch::seal::seal(hexpulse_lake::epoch::seal::SealRequest {
        input,
        output,
        cfg,
        rules: &rules,
        epoch: id,
        force: true,
        topic: "raw-readings",
        partitions: 1,
    })
    .await
    .map(|s| s.manifest().clone())
}
