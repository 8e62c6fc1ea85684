//! #24: the MQTT bridge from outside. Readings that a Python script signed (PyNaCl) are published
//! with `mosquitto_pub` to a real Mosquitto; `hexpulse mqtt` bridges them into Kafka, and `hexpulse
//! up` lands them in the lake. The bridge is SIGKILLed twice while devices publish, and Mosquitto
//! is stopped and started again: every reading is in the lake once, none lost, none doubled in the
//! valid tables, and each message's verdict is on the answers topic, bad ones with their reason.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hexpulse_testkit::testenv;

use crate::restart::sql;
use crate::up::{Up, accounting_layer, root};

/// A Mosquitto of the test's own on `port`, persistent (its queued messages survive a restart).
pub(crate) struct Mosquitto {
    bin: String,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Mosquitto {
    pub(crate) fn start(bin: &str, dir: &Path) -> Mosquitto {
        let port = free_port();
        // Run as root, Mosquitto drops to the `mosquitto` user: its directory must be writable
        // for that user, for its persistence file and its log.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = dir.join("mosquitto");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut m = Mosquitto {
            bin: bin.to_string(),
            dir,
            port,
            child: None,
        };
        m.run();
        m
    }

    fn run(&mut self) {
        let conf = self.dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nautosave_interval 1\nlog_dest file {}/mosquitto.log\n",
                self.port,
                self.dir.display(),
                self.dir.display()
            ),
        )
        .unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&conf)
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "mosquitto did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it as a service stop does (SIGTERM: it saves its state), and waits.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    pub(crate) fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, also when the test fails.
pub(crate) struct Reaped(Child);

impl Reaped {
    fn sigkill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        self.sigkill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `hexpulse mqtt` against `up`'s Kafka topic and registry, in the shared subscription
/// `share_group` (none when empty); returns once it serves its health, with its base URL. Its log
/// goes to `log` (appended), at info level.
pub(crate) fn bridge(
    up: &Up,
    brokers: &str,
    mqtt: &str,
    client_id: &str,
    share_group: &str,
    log: &Path,
) -> (Reaped, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut child = up
        .command(brokers)
        .arg("mqtt")
        .env("RUST_LOG", "info")
        .stderr(log)
        .env("HEXPULSE__MQTT__BROKER", mqtt)
        .env("HEXPULSE__MQTT__CLIENT_ID", client_id)
        .env("HEXPULSE__MQTT__SHARE_GROUP", share_group)
        .env("HEXPULSE__MQTT__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("hexpulse mqtt");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let health = line
        .trim()
        .rsplit(' ')
        .next()
        .expect("the bridge printed its health address")
        .to_string();
    (Reaped(child), health)
}

/// Publishes every line of `file` as one QoS 1 message to the device's topic.
fn publish(mosquitto: &str, mqtt_port: u16, device: &str, file: &Path) -> Child {
    Command::new(mosquitto_client(mosquitto, "mosquitto_pub"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &mqtt_port.to_string(),
            "-q",
            "1",
            "-V",
            "mqttv5",
        ])
        .args(["-t", &format!("hexpulse/v1/readings/{device}"), "-l"])
        .stdin(std::fs::File::open(file).unwrap())
        .spawn()
        .expect("mosquitto_pub")
}

/// Every verdict on the answers topics, appended to `file` as `mosquitto_sub -v` prints them.
fn listen_to_answers(mosquitto: &str, mqtt_port: u16, file: &Path) -> Reaped {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap();
    Reaped(
        Command::new(mosquitto_client(mosquitto, "mosquitto_sub"))
            .args(["-h", "127.0.0.1", "-p", &mqtt_port.to_string()])
            .args(["-q", "1", "-v", "-t", "hexpulse/v1/answers/#"])
            .stdout(out)
            .spawn()
            .expect("mosquitto_sub"),
    )
}

fn mosquitto_client(mosquitto: &str, name: &str) -> String {
    // The clients are in /usr/bin; the broker in /usr/sbin.
    let beside = Path::new(mosquitto).with_file_name(name);
    if beside.exists() {
        beside.display().to_string()
    } else {
        name.to_string()
    }
}

#[test]
fn mqtt_readings_survive_bridge_kills_and_a_broker_restart_exactly_once() {
    let Some(brokers) = testenv::broker_or_skip("mqtt_bridge") else {
        return;
    };
    let Some(python) = testenv::python_or_skip("mqtt_bridge") else {
        return;
    };
    let Some(mosquitto_bin) = testenv::mosquitto_or_skip("mqtt_bridge") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let mut mosquitto = Mosquitto::start(&mosquitto_bin, work.path());
    let up = Up::start(
        "it-mqtt",
        &brokers,
        &["--rate", "10"],
        Some(&accounting_layer("")),
    );
    let token = up.admin_token.clone().expect("`up` printed an admin token");

    // Devices and their signed readings, from the Python script; registered through the admin API.
    let readings = work.path().join("readings");
    let out = Command::new(&python)
        .arg(format!("{}/schemas/examples/sign_readings.py", root()))
        .args(["--devices", "4", "--readings", "150", "--bad", "--out"])
        .arg(&readings)
        .output()
        .expect("sign readings");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let devices: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(readings.join("devices.json")).unwrap()).unwrap();
    let keys: Vec<String> = devices
        .iter()
        .map(|d| d["public_key"].as_str().unwrap().to_string())
        .collect();
    crate::restart::block_on(async {
        let client = reqwest::Client::new();
        for d in &devices {
            let r = client
                .post(format!("{}/v1/admin/devices", up.ingest))
                .bearer_auth(&token)
                .json(d)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 201);
        }
    });
    std::thread::sleep(Duration::from_secs(2));

    // Every verdict, as a device listening to its answers would.
    let answers_file = work.path().join("answers.txt");
    let mut answers = listen_to_answers(&mosquitto_bin, mosquitto.port, &answers_file);

    let file = |k: &str| readings.join(format!("{k}.jsonl"));
    let log = work.path().join("bridge.log");
    let (mut b, _) = bridge(&up, &brokers, &mosquitto.address(), "it-bridge", "", &log);
    // Device 0 with the bridge up.
    assert!(
        publish(&mosquitto_bin, mosquitto.port, &keys[0], &file(&keys[0]))
            .wait()
            .unwrap()
            .success()
    );
    // Devices 1 and 2: the bridge SIGKILLed as each starts publishing, then started again.
    for k in &keys[1..3] {
        let mut p = publish(&mosquitto_bin, mosquitto.port, k, &file(k));
        std::thread::sleep(Duration::from_millis(150));
        b.sigkill();
        assert!(p.wait().unwrap().success());
        b = bridge(&up, &brokers, &mosquitto.address(), "it-bridge", "", &log).0;
    }
    // Mosquitto stopped and started again; the bridge reconnects by itself. Then device 3, and
    // the bad messages.
    std::thread::sleep(Duration::from_secs(1));
    mosquitto.stop();
    std::thread::sleep(Duration::from_secs(2));
    mosquitto.run();
    answers.sigkill();
    let mut answers = listen_to_answers(&mosquitto_bin, mosquitto.port, &answers_file);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        publish(&mosquitto_bin, mosquitto.port, &keys[3], &file(&keys[3]))
            .wait()
            .unwrap()
            .success()
    );
    let bad = std::fs::read_to_string(readings.join("bad.jsonl")).unwrap();
    let mut expected_bad = Vec::new();
    for line in bad.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let payload = match &v["message"] {
            serde_json::Value::String(s) => s.clone(),
            m => m.to_string(),
        };
        expected_bad.push(v["expect"].as_str().unwrap().to_string());
        let one = work.path().join("bad-one.jsonl");
        std::fs::write(&one, format!("{payload}\n")).unwrap();
        assert!(
            publish(&mosquitto_bin, mosquitto.port, &keys[0], &one)
                .wait()
                .unwrap()
                .success()
        );
    }

    // Every reading in the committed lake: once in `sensor`, never elsewhere but as `duplicate`.
    let list = keys
        .iter()
        .map(|k| format!("'{k}'"))
        .collect::<Vec<_>>()
        .join(",");
    let started = Instant::now();
    let (stored, rejected) = loop {
        let rows = sql(
            &up.query,
            &format!(
                "SELECT device_key, seq, count(DISTINCT src_offset * 100 + src_partition) AS n FROM committed.sensor \
                 WHERE device_key IN ({list}) GROUP BY device_key, seq"
            ),
        );
        let stored: BTreeMap<(String, u64), u64> = rows
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    (
                        r["device_key"].as_str().unwrap().to_string(),
                        r["seq"].as_u64().unwrap(),
                    ),
                    r["n"].as_u64().unwrap(),
                )
            })
            .collect();
        if stored.len() >= 600 || started.elapsed() > Duration::from_secs(120) {
            let rejected = sql(
                &up.query,
                &format!(
                    "SELECT reason, count(*) AS n FROM committed.rejected WHERE device_key IN ({list}) GROUP BY reason"
                ),
            );
            break (stored, rejected);
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    eprintln!(
        "mqtt: {} readings stored; rejected by reason: {rejected}",
        stored.len()
    );
    if stored.len() != 600 {
        for (i, k) in keys.iter().enumerate() {
            let n = stored.keys().filter(|(d, _)| d == k).count();
            eprintln!("device {i} ({k}): {n} of 150 stored");
        }
        eprintln!(
            "the bridge's log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        eprintln!(
            "mosquitto's log:\n{}",
            std::fs::read_to_string(mosquitto.dir.join("mosquitto.log")).unwrap_or_default()
        );
    }
    assert_eq!(stored.len(), 600, "readings lost");
    assert!(stored.values().all(|n| *n == 1), "a reading stored twice");
    for r in rejected.as_array().into_iter().flatten() {
        // The forged reading reaches nobody; redelivered copies are the only rejections.
        assert_eq!(r["reason"], "duplicate", "{rejected}");
    }

    // The verdicts: every good message answered accepted, each bad one with its reason.
    std::thread::sleep(Duration::from_secs(2));
    answers.sigkill();
    let text = std::fs::read_to_string(&answers_file).unwrap();
    let accepted = text
        .lines()
        .filter(|l| l.contains("\"accepted\":1"))
        .count();
    assert!(accepted >= 150, "verdicts of accepted messages: {accepted}");
    for code in &expected_bad {
        assert!(
            text.lines()
                .any(|l| l.contains(&keys[0]) && l.contains(&format!("\"{code}\""))),
            "no verdict with {code} on {}'s answers topic",
            keys[0]
        );
    }
    b.sigkill();
}
