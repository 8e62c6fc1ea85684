//! Soak: `make up`'s configuration (the demo config, the durable sqlite broker) under sustained,
//! mixed traffic for `HEXPULSE_SOAK` (default 3 minutes in `make test`; `make soak` runs 30), with
//! faults on a schedule:
//!
//! - the demo fleet at a steady rate, with every adversarial class, accounted at the end
//!   (`hexpulse simulate --account`);
//! - bursts of many small batches (one reading per request, 16 at once) every minute;
//! - an outside consumer group reading the raw topic from the start, all the time;
//! - a second processor in the group, SIGKILLed every `HEXPULSE_SOAK_KILL_EVERY` (default a
//!   minute; `off` for none) and started again `HEXPULSE_SOAK_RESTART_AFTER` later (default at
//!   once);
//! - one broker restart (stopped 10 s) at half time.
//!
//! `HEXPULSE_SOAK_LATENESS` (`make soak`: 5m) compresses time: the rules' lateness and the
//! compaction grace (1m) shrink, so that the processors' dedupe state and the files not merged yet
//! reach their steady size within a 2-hour run, after which `up` must not pass its steady peak.
//!
//! Per minute it records readings accepted, the simulator's p99 latency, the peak RSS of `up`
//! (ingest, processor, query and sealer in one process) and of the second processor, the lake's and
//! the broker's disk use, what the outside consumer read, and whether the broker answered. It fails on any accounting
//! mismatch, on a minute without accepted readings while traffic was offered and no fault was
//! injected, on the outside consumer stalling, and on memory that keeps growing. The table goes to
//! stderr and `test-output/soak.json`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hexpulse_testkit::testenv;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Value, json};

use crate::up::{Up, accounted, accounting_layer, root};

fn duration_env(name: &str, default: &str) -> Duration {
    let text = std::env::var(name).unwrap_or_else(|_| default.to_string());
    humantime::parse_duration(&text).unwrap_or_else(|e| panic!("{name}={text}: {e}"))
}

/// Resident memory of a process, bytes (0 once it is gone).
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn disk_use(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return std::fs::metadata(path).map_or(0, |m| m.len());
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_use(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// The simulator's progress, as its periodic lines report it.
#[derive(Default)]
struct Progress {
    accepted: AtomicU64,
    p99_us: AtomicU64,
}

/// Follows `hexpulse simulate`'s stderr (`[simulate] 12s sent N accepted N (..) ... p99 X ms`).
fn follow(child: &mut Child, progress: Arc<Progress>) -> std::thread::JoinHandle<Vec<String>> {
    let stderr = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        let mut tail = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |w: &str| {
                words
                    .iter()
                    .position(|x| *x == w)
                    .and_then(|i| words.get(i + 1))
                    .and_then(|v| v.parse::<f64>().ok())
            };
            if let Some(n) = after("accepted") {
                progress.accepted.store(n as u64, Ordering::Relaxed);
            }
            if let Some(p) = after("p99") {
                progress
                    .p99_us
                    .store((p * 1000.0) as u64, Ordering::Relaxed);
            }
            tail.push(line);
            if tail.len() > 40 {
                tail.remove(0);
            }
        }
        tail
    })
}

/// An outside consumer group reading the raw topic from the start, counting what it gets.
fn outside_consumer(
    brokers: String,
    topic: String,
    got: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("{topic}-outside"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "true")
            .create()
            .expect("outside consumer");
        let mut tpl = TopicPartitionList::new();
        loop {
            if let Ok(md) = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5))
                && let Some(t) = md.topics().first()
                && !t.partitions().is_empty()
            {
                for p in t.partitions() {
                    tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)
                        .unwrap();
                }
                break;
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        consumer.assign(&tpl).expect("assign");
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(200)) {
                got.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

#[test]
fn soak_under_mixed_traffic_and_faults() {
    let length = duration_env("HEXPULSE_SOAK", "3m");
    // "off": no second processor.
    let kill_every = match std::env::var("HEXPULSE_SOAK_KILL_EVERY").as_deref() {
        Ok("off") => None,
        _ => Some(duration_env("HEXPULSE_SOAK_KILL_EVERY", "1m")),
    };
    let cache = tempfile::tempdir().unwrap();
    let Some(broker) = testenv::OwnBroker::for_test("soak", cache.path()) else {
        return;
    };
    broker.start();
    let brokers = broker.address();
    // Time compressed for long runs (`HEXPULSE_SOAK_LATENESS`): with `make up`'s 2 h lateness, the
    // processors' dedupe state grows for 2 h 5 min, and an hour's files are merged 2 h 15 min after
    // its end, so no soak of a few hours reaches the steady state in which growth means a leak.
    let lateness = std::env::var("HEXPULSE_SOAK_LATENESS")
        .ok()
        .filter(|l| !l.is_empty());
    let lateness_minutes = lateness.as_deref().map(|l| {
        humantime::parse_duration(l)
            .unwrap_or_else(|e| panic!("HEXPULSE_SOAK_LATENESS={l}: {e}"))
            .as_secs()
            / 60
    });
    let rules_layer = lateness.as_deref().map_or(String::new(), |l| {
        let rules = std::fs::read_to_string(format!("{}/config/rules.toml", root())).unwrap();
        let line = "allowed_lateness = \"2h\"";
        assert!(rules.contains(line), "config/rules.toml has {line}");
        let path = cache.path().join("rules.toml");
        std::fs::write(
            &path,
            rules.replace(line, &format!("allowed_lateness = \"{l}\"")),
        )
        .unwrap();
        format!(
            "rules_path = \"{p}\"\ncompact_grace = \"1m\"\n\n[query]\nrules_path = \"{p}\"",
            p = path.display()
        )
    });
    let layer = accounting_layer(&format!(
        "delivery_timeout = \"3s\"\n\n[process]\nsession_timeout = \"30s\"\n{rules_layer}"
    ));
    // `make up`'s broker watch too (its default stall time outlasts the broker restart below).
    let restart = broker.restart_command();
    let up = Up::start(
        "it-soak",
        &brokers,
        &["--no-traffic", "--broker-restart", &restart],
        Some(&layer),
    );
    let started = Instant::now();
    let started_at_ms = hexpulse_common::time::now_ms();
    eprintln!(
        "soak for {} (second processor killed every {}), topic {}",
        humantime::format_duration(length),
        kill_every.map_or("-".into(), |k| humantime::format_duration(k).to_string()),
        up.topic
    );

    // The steady fleet, accounted at the end.
    let progress = Arc::new(Progress::default());
    let mut fleet = up
        .simulate(
            &brokers,
            &[
                "--adversarial",
                "0.01",
                "--duration",
                &format!("{}s", length.as_secs()),
                "--rate",
                "300",
                "--devices",
                "1000",
                "--batch-size",
                "20",
                "--settle",
                "180s",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hexpulse simulate");
    let fleet_log = follow(&mut fleet, progress.clone());

    let (outside_got, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let outside = outside_consumer(
        brokers.clone(),
        up.topic.clone(),
        outside_got.clone(),
        stop.clone(),
    );

    // A second processor in the group, killed and restarted on schedule.
    // Its log goes to test-output/soak-processor.log (each start appends).
    let _ = std::fs::create_dir_all(format!("{}/test-output", root()));
    let processor_log = format!("{}/test-output/soak-processor.log", root());
    let _ = std::fs::remove_file(&processor_log);
    let spawn_processor = || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&processor_log)
            .expect("processor log");
        up.command(&brokers)
            .arg("process")
            .env("HEXPULSE__PROCESS__LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("hexpulse process")
    };
    let mut processor = kill_every.map(|_| spawn_processor());

    let minutes: Arc<Mutex<Vec<Value>>> = Arc::default();
    let lake = up.lake();
    let broker_db = cache.path().join(format!("run/broker-{}", broker.port));
    let (mut last_accepted, mut last_outside) = (0u64, 0u64);
    let mut next_kill = kill_every.unwrap_or(Duration::MAX);
    let restart_after = duration_env("HEXPULSE_SOAK_RESTART_AFTER", "0s");
    let mut restart_at: Option<Duration> = None;
    let mut broker_restarted = false;
    let mut minute_start = Instant::now();
    // Only the broker restart excuses a minute without accepted readings: ingest acknowledges
    // what the broker has, whatever the processors do.
    let mut fault_this_minute = false;
    let (mut peak_up, mut peak_processor, mut kills_this_minute) = (0u64, 0u64, 0u32);
    let mut bursts = Vec::new();
    let mut burst_due = Duration::from_secs(20);
    while started.elapsed() < length {
        std::thread::sleep(Duration::from_secs(1));
        let t = started.elapsed();
        if t >= burst_due {
            burst_due += Duration::from_secs(60);
            bursts.push(
                up.command(&brokers)
                    .args(["simulate", "--register", "--target-url", &up.ingest])
                    .args([
                        "--count",
                        "2000",
                        "--batch-size",
                        "1",
                        "--concurrency",
                        "16",
                    ])
                    .args(["--rate", "0", "--devices", "200"])
                    .env(
                        "HEXPULSE__SIMULATE__SEED",
                        rand::random::<u32>().to_string(),
                    )
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("burst"),
            );
        }
        if t >= next_kill {
            next_kill = next_kill.saturating_add(kill_every.unwrap_or(Duration::MAX));
            eprintln!("{:>5.0}s SIGKILL of the second processor", t.as_secs_f64());
            if let Some(p) = processor.as_mut() {
                let _ = p.kill();
                let _ = p.wait();
            }
            // Started again as a supervisor would. Before `run::OrphanWatch`, the dead member's
            // partitions stayed with nobody under tansu 0.6 (a third of the readings still
            // unprocessed 3 minutes after the run).
            restart_at = Some(t + restart_after);
            kills_this_minute += 1;
        }
        if restart_at.is_some_and(|at| t >= at) {
            restart_at = None;
            processor = Some(spawn_processor());
        }
        if !broker_restarted && t >= length / 2 {
            broker_restarted = true;
            fault_this_minute = true;
            eprintln!("{:>5.0}s broker stopped for 10 s", t.as_secs_f64());
            broker.stop();
            std::thread::sleep(Duration::from_secs(10));
            broker.start();
            eprintln!("{:>5.0}s broker back", started.elapsed().as_secs_f64());
        }
        peak_up = peak_up.max(rss(up.pid()));
        peak_processor = peak_processor.max(processor.as_ref().map_or(0, |p| rss(p.id())));
        if minute_start.elapsed() >= Duration::from_secs(60) {
            let accepted = progress.accepted.load(Ordering::Relaxed);
            let got = outside_got.load(Ordering::Relaxed);
            let answers = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .create::<BaseConsumer>()
                .ok()
                .is_some_and(|c| {
                    c.fetch_metadata(Some(&up.topic), Duration::from_secs(10))
                        .is_ok()
                });
            let row = json!({
                "minute": minutes.lock().unwrap().len() + 1,
                "accepted": accepted - last_accepted,
                "p99_ms": progress.p99_us.load(Ordering::Relaxed) as f64 / 1000.0,
                "outside_consumer_read": got - last_outside,
                "peak_rss_up_mib": peak_up >> 20,
                "peak_rss_processor_mib": peak_processor >> 20,
                "processor_kills": kills_this_minute,
                "lake_mib": disk_use(&lake) >> 20,
                "broker_mib": disk_use(&broker_db) >> 20,
                "broker_answers": answers,
                "fault": fault_this_minute,
            });
            eprintln!("soak minute {row}");
            minutes.lock().unwrap().push(row);
            (last_accepted, last_outside) = (accepted, got);
            minute_start = Instant::now();
            fault_this_minute = false;
            (peak_up, peak_processor, kills_this_minute) = (0, 0, 0);
        }
    }
    let out = {
        let tail = fleet_log;
        let status = fleet.wait().expect("simulate finishes");
        let mut stdout = String::new();
        std::io::Read::read_to_string(&mut fleet.stdout.take().unwrap(), &mut stdout).unwrap();
        let tail = tail.join().unwrap_or_default();
        std::process::Output {
            status,
            stdout: stdout.into_bytes(),
            stderr: tail.join("\n").into_bytes(),
        }
    };
    for mut b in bursts {
        let _ = b.wait();
    }
    stop.store(true, Ordering::Relaxed);
    let _ = outside.join();
    if let Some(mut p) = processor {
        let _ = p.kill();
        let _ = p.wait();
    }

    let minutes = minutes.lock().unwrap().clone();
    let simulated = crate::up::summary(&out);
    let report = json!({
        "length_s": length.as_secs(),
        "kill_every_s": kill_every.map(|k| k.as_secs()),
        "minutes": minutes,
        "outside_consumer_total": outside_got.load(Ordering::Relaxed),
        // The soak's own start and restart are two; more are the broker watch's.
        "broker_starts": broker.log().matches("broker.sh start").count(),
        // The simulator's accounting of every reading sent against the lake.
        "accounting": simulated["accounting"].clone(),
    });
    let _ = std::fs::create_dir_all(format!("{}/test-output", root()));
    std::fs::write(
        format!("{}/test-output/soak.json", root()),
        serde_json::to_vec_pretty(&report).unwrap(),
    )
    .unwrap();
    // Where each partition stands, for a failed accounting: records in the log, the chain end in
    // the lake, and whether a unit is unfinished.
    let lake_handle = hexpulse_lake::Lake::open(&lake.display().to_string()).expect("lake");
    let chains = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut out = Vec::new();
        for p in 0..2 {
            out.push(hexpulse_lake::unit::chain(&lake_handle, &up.topic, p).await);
        }
        out
    });
    let watermarks = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create::<BaseConsumer>()
        .map(|c| {
            (0..2)
                .map(|p| c.fetch_watermarks(&up.topic, p, Duration::from_secs(10)))
                .collect::<Vec<_>>()
        });
    eprintln!("partitions at the end: log watermarks {watermarks:?}, lake chains {chains:?}");
    // Ingest's own view of its deliveries: acknowledgements without an offset (a resent batch the
    // broker called a duplicate) and producers replaced after a failed delivery.
    let ingest_metrics = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let r = reqwest::get(format!("{}/metrics", up.ingest)).await.ok()?;
        r.text().await.ok()
    });
    for line in ingest_metrics.unwrap_or_default().lines() {
        if line.starts_with("hexpulse_ingest_delivered_without_offset_total")
            || line.starts_with("hexpulse_ingest_producer_replaced_total")
        {
            eprintln!("ingest at the end: {line}");
        }
    }
    let mismatched = simulated["accounting"]["examples"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !mismatched.is_empty() {
        post_mortem(&brokers, &up.topic, &lake, &mismatched);
        // The broker's own log goes with the test's temporary directory: keep it.
        let kept = format!("{}/test-output/soak-broker.log", root());
        if std::fs::copy(broker_db.join("log"), &kept).is_ok() {
            eprintln!("post-mortem: the broker's log is kept at {kept}");
        }
    }
    let summary = accounted(&out);
    eprintln!(
        "soak: {} acknowledged, accounting {}, broker started {} times (2 by the soak)",
        summary["accounting"]["acknowledged"],
        summary["accounting"]["mismatch_total"],
        report["broker_starts"]
    );
    for m in &minutes {
        if m["fault"] == false {
            assert!(
                m["accepted"].as_u64().unwrap() > 0,
                "a minute without accepted readings and without a fault: {m}"
            );
            assert_eq!(m["broker_answers"], true, "the broker did not answer: {m}");
        }
    }
    assert!(
        outside_got.load(Ordering::Relaxed) > 0,
        "the outside consumer read nothing"
    );
    // And once every state has reached its steady size, `up` must not grow past it. The dedupe
    // state is steady after lateness and skew. The files not merged yet rise for an hour plus
    // `delay` (an hour is merged after its end plus lateness, skew, the grace and a compaction
    // interval) and fall at each merge, and `up`'s memory follows them (each query plans with every
    // file). So the peak up to the merge of the run's first whole hour is the steady peak, and
    // after it no minute may exceed it by more than 10%.
    if let Some(lateness_minutes) = lateness_minutes {
        // Lateness, the rules' 5-minute skew, the 1-minute grace and a compaction interval.
        let delay = lateness_minutes + 5 + 1 + 1;
        let start_minute = (started_at_ms / 60_000).rem_euclid(60) as u64;
        let steady = if start_minute == 0 {
            60
        } else {
            120 - start_minute
        } + delay;
        let peak = |after: bool| {
            minutes
                .iter()
                .filter(|m| (m["minute"].as_u64().unwrap() > steady) == after)
                .map(|m| m["peak_rss_up_mib"].as_u64().unwrap())
                .max()
        };
        let after = minutes.len() as u64 - steady.min(minutes.len() as u64);
        match (peak(false), peak(true)) {
            (Some(before), Some(later)) if after >= 20 => {
                eprintln!(
                    "soak: `up` peaked at {before} MiB up to minute {steady} (the first whole hour merged), at {later} MiB in the {after} minutes after"
                );
                assert!(
                    later * 10 <= before * 11,
                    "`up` kept growing: {later} MiB after minute {steady}, {before} MiB before"
                );
            }
            _ => {
                eprintln!(
                    "soak: too short for the steady-state memory check (it needs 20 minutes after minute {steady}, the merge of the run's first whole hour); comparing the last minute with the first"
                );
                crude_memory_check(&minutes);
            }
        }
    } else {
        crude_memory_check(&minutes);
    }
}

/// For a run too short to reach the steady state: the last minute is not far above the first (no
/// growth without bound). A long run has the precise check above instead: its first minute, before
/// any file or query, says nothing about the working set of a full hour of unmerged files.
fn crude_memory_check(minutes: &[Value]) {
    if let (Some(first), Some(last)) = (minutes.first(), minutes.last()) {
        let (a, b) = (
            first["peak_rss_up_mib"].as_u64().unwrap(),
            last["peak_rss_up_mib"].as_u64().unwrap(),
        );
        assert!(
            b <= (2 * a).max(a + 512),
            "`up` grew from {a} MiB to {b} MiB"
        );
    }
}

/// Where the readings the accounting names (`device <key prefix> seq <n>`) are: in the raw topic
/// (partition and offset), and in the lake's Delta tables as delta-rs's Python binding reads them
/// (independent of our reader and of the query service). Tells a lost reading from an invisible one.
fn post_mortem(brokers: &str, topic: &str, lake: &std::path::Path, examples: &[Value]) {
    use hexpulse_schemas::wire::{SignedReading, envelope};
    use prost::Message;
    use rdkafka::Message as _;
    let wanted: Vec<(String, u64)> = examples
        .iter()
        .filter_map(|e| {
            let w: Vec<&str> = e.as_str()?.split_whitespace().collect();
            let at = w.iter().position(|x| *x == "device")?;
            Some((w.get(at + 1)?.to_string(), w.get(at + 3)?.parse().ok()?))
        })
        .collect();
    // Read uncommitted (every record stored, whatever its transaction state), and only the log's
    // tail: the missing readings so far were all sent in the last seconds of traffic, and a read
    // of the whole log of a long run from its start outlasted the post-mortem's patience.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-post-mortem"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        let from = match consumer.fetch_watermarks(topic, p, Duration::from_secs(30)) {
            Ok((low, high)) => Offset::Offset(low.max(high - 100_000)),
            Err(e) => {
                eprintln!("post-mortem: partition {p} watermarks: {e}; reading from the start");
                Offset::Beginning
            }
        };
        eprintln!("post-mortem: partition {p}: reading from {from:?}");
        tpl.add_partition_offset(topic, p, from).unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let (mut read, mut quiet) = (0u64, 0);
    while quiet < 20 {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) else {
            quiet += 1;
            continue;
        };
        quiet = 0;
        read += 1;
        let value = m.payload().unwrap_or_default();
        let signed = envelope::decode(value).map_or(value, |e| e.signed);
        let Ok(item) = SignedReading::decode(signed) else {
            continue;
        };
        let Ok(reading) = hexpulse_schemas::check::decode_payload(&item) else {
            continue;
        };
        let key = hex::encode(&item.public_key);
        if wanted
            .iter()
            .any(|(k, seq)| key.starts_with(k.as_str()) && *seq == reading.seq)
        {
            eprintln!(
                "post-mortem: device {key} seq {} is in the raw topic: partition {} offset {}",
                reading.seq,
                m.partition(),
                m.offset()
            );
        }
    }
    eprintln!("post-mortem: read {read} records of the raw topic");
    // A broker whose high watermark lags behind what it stored would show nothing past it until
    // the next write: write a marker to each partition and look past the old ends again.
    let producer: rdkafka::producer::BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    for p in 0..2 {
        let before = consumer.fetch_watermarks(topic, p, Duration::from_secs(10));
        let _ = producer.send(
            rdkafka::producer::BaseRecord::<(), [u8]>::to(topic)
                .partition(p)
                .payload(b"soak post-mortem marker".as_slice()),
        );
        let _ = rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10));
        let after = consumer.fetch_watermarks(topic, p, Duration::from_secs(10));
        eprintln!(
            "post-mortem: partition {p} watermarks before a marker {before:?}, after {after:?}"
        );
    }
    let mut quiet = 0;
    while quiet < 10 {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) else {
            quiet += 1;
            continue;
        };
        quiet = 0;
        eprintln!(
            "post-mortem: after the marker, partition {} offset {} ({} bytes)",
            m.partition(),
            m.offset(),
            m.payload().map_or(0, <[u8]>::len)
        );
    }
    let Some(python) = testenv::python_or_skip("soak post-mortem") else {
        return;
    };
    let seqs: Vec<String> = wanted.iter().map(|w| w.1.to_string()).collect();
    let script = format!(
        "import deltalake, sys\n\
         for t in ['heartbeat', 'sensor', 'road', 'rejected']:\n\
         \x20   d = deltalake.DeltaTable('{}/' + t)\n\
         \x20   rows = d.to_pyarrow_table(filters=[('seq', 'in', [{}])], columns=['device_key', 'seq', 'src_partition', 'src_offset']).to_pylist()\n\
         \x20   print('post-mortem: lake', t, 'version', d.version(), rows)\n",
        lake.display(),
        seqs.join(", ")
    );
    let out = std::process::Command::new(python)
        .args(["-c", &script])
        .output()
        .expect("python");
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
