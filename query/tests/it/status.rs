//! Device status over a lake that a real processor writes from broker traffic: the cache follows
//! the commits, its answers equal what SQL over the lake says, and a device that stops sending turns
//! stale, then offline, at its thresholds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use hexpulse_lake::Lake;
use hexpulse_query::params::rfc3339;
use hexpulse_query::status::StatusConfig;
use hexpulse_query::{Query, QueryConfig};
use hexpulse_testkit::scenario;
use hexpulse_testkit::testenv;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support::*;

const ONLINE_S: u64 = 30;
const OFFLINE_S: u64 = 40;
const BERLIN_BOX: &str = "13.0,52.3,13.8,52.7";

async fn get(base: &str, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn sql(base: &str, q: &str) -> Vec<Value> {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/sql"))
        .body(q.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{q}");
    r.json::<Value>().await.unwrap().as_array().unwrap().clone()
}

/// What SQL over the lake says of each device: the fields of its status answer that do not depend
/// on the clock.
async fn expected(base: &str) -> BTreeMap<String, Value> {
    let mut out: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    let last = |table: &str| {
        format!("SELECT device_key, CAST(max(receive_time) AS BIGINT) AS r FROM {table} GROUP BY 1")
    };
    for r in sql(base, &last("heartbeat")).await {
        let e = out
            .entry(r["device_key"].as_str().unwrap().into())
            .or_default();
        e.insert(
            "last_heartbeat".into(),
            rfc3339(r["r"].as_i64().unwrap()).into(),
        );
    }
    for r in sql(base, &last("(SELECT device_key, receive_time FROM sensor UNION ALL SELECT device_key, receive_time FROM road)")).await {
        let e = out.entry(r["device_key"].as_str().unwrap().into()).or_default();
        e.insert("last_reading".into(), rfc3339(r["r"].as_i64().unwrap()).into());
    }
    // The location of the newest valid row: received last, and of those made last.
    let rows = sql(
        base,
        "SELECT device_key, lat, lng, h3_cell_to_string(h3_r12) AS cell FROM (\
           SELECT *, row_number() OVER (PARTITION BY device_key ORDER BY receive_time DESC, event_time DESC) AS n FROM (\
             SELECT device_key, lat, lng, h3_r12, receive_time, event_time FROM heartbeat UNION ALL \
             SELECT device_key, lat, lng, h3_r12, receive_time, event_time FROM sensor UNION ALL \
             SELECT device_key, lat, lng, h3_r12, receive_time, event_time FROM road)) WHERE n = 1",
    )
    .await;
    for r in rows {
        let e = out
            .entry(r["device_key"].as_str().unwrap().into())
            .or_default();
        e.insert(
            "location".into(),
            serde_json::json!([r["lat"], r["lng"], r["cell"]]),
        );
    }
    let rows = sql(
        base,
        "SELECT device_key, reason, count(*) AS n FROM rejected \
         WHERE length(device_key) = 64 GROUP BY 1, 2",
    )
    .await;
    for r in rows {
        let e = out
            .entry(r["device_key"].as_str().unwrap().into())
            .or_default();
        let by = e
            .entry("rejections")
            .or_insert_with(|| Value::Object(Default::default()));
        by[r["reason"].as_str().unwrap()] = r["n"].clone();
    }
    out.into_iter()
        .map(|(k, mut v)| {
            v.entry("rejections")
                .or_insert_with(|| Value::Object(Default::default()));
            (k, Value::Object(v))
        })
        .collect()
}

/// The same fields of a status answer.
fn observed(v: &Value) -> Value {
    let mut m = serde_json::Map::new();
    if let Some(t) = v["last_heartbeat"]["receive_time"].as_str() {
        m.insert("last_heartbeat".into(), t.into());
    }
    if let Some(t) = v["last_reading"]["receive_time"].as_str() {
        m.insert("last_reading".into(), t.into());
    }
    let l = &v["location"];
    if l.is_object() {
        m.insert(
            "location".into(),
            serde_json::json!([l["lat"], l["lng"], l["h3_cell"]]),
        );
    }
    m.insert("rejections".into(), v["rejections"]["by_reason"].clone());
    Value::Object(m)
}

fn state_for(age_s: f64) -> &'static str {
    if age_s <= ONLINE_S as f64 {
        "online"
    } else if age_s <= OFFLINE_S as f64 {
        "stale"
    } else {
        "offline"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_status_follows_the_lake_and_ages() {
    let Some(brokers) = testenv::broker_or_skip("device_status_follows_the_lake_and_ages") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().to_str().unwrap().to_string();
    let stop = CancellationToken::new();
    let mut qcfg = QueryConfig::for_tests(&url);
    qcfg.status = StatusConfig {
        online_within: Duration::from_secs(ONLINE_S),
        offline_after: Duration::from_secs(OFFLINE_S),
        window: Duration::from_secs(3600),
        max_devices: 1000,
        refresh_interval: Duration::from_millis(200),
    };
    // Started before any data: the cache reads the tables as the processor's commits arrive.
    let q = Query::start(qcfg.clone(), Lake::open(&url).unwrap(), stop.clone())
        .await
        .unwrap();
    let base = format!("http://{}", q.addr);
    let nobody = "00".repeat(32);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (status, v) = loop {
        let (status, v) = get(&base, &format!("/v1/devices/{nobody}/status")).await;
        if status != 503 || Instant::now() > deadline {
            break (status, v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["error"]["code"], "unknown_device", "{v}");

    let now = now_ms();
    let sc = scenario::build(now, 6);
    let kafka = kafka(&brokers, "it-status", 2);
    produce(&kafka, &sc, now).await;
    let (_p, pstop) = start_processor(&kafka, &format!("{}-g", kafka.raw_topic), &sc, &url).await;
    let lake = Lake::open(&url).unwrap();
    let summary = wait_for(&lake, sc.records.len(), Duration::from_secs(90)).await;
    assert_matches(&summary, &sc);
    pstop.cancel();

    // Every device's answer equals what SQL over the lake says (once the cache has read the last
    // commits).
    let want = expected(&base).await;
    assert!(want.len() >= 10, "{want:?}");
    assert!(
        want.values()
            .any(|w| w["rejections"].as_object().is_some_and(|r| !r.is_empty())),
        "the scenario's rejections name devices: {want:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        let mut got = BTreeMap::new();
        for k in want.keys() {
            let (status, v) = get(&base, &format!("/v1/devices/{k}/status")).await;
            assert!(status == 200 || status == 404, "{status} {v}");
            got.insert(k.clone(), if status == 200 { observed(&v) } else { v });
        }
        if got == want || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(got, want);

    // The box holds every device with a location, and only them.
    let located: BTreeSet<String> = want
        .iter()
        .filter(|(_, w)| w.get("location").is_some())
        .map(|(k, _)| k.clone())
        .collect();
    let (status, v) = get(&base, &format!("/v1/devices/status?bbox={BERLIN_BOX}")).await;
    assert_eq!(status, 200, "{v}");
    let in_box: BTreeSet<String> = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(in_box, located);
    let (_, v) = get(&base, "/v1/devices/status?bbox=2.2,48.8,2.4,48.9").await;
    assert_eq!(v["count"], 0, "{v}");
    let (_, v) = get(
        &base,
        &format!("/v1/devices/status?bbox={BERLIN_BOX}&kind=road"),
    )
    .await;
    let roads = v["devices"].as_array().unwrap();
    assert!(
        !roads.is_empty() && roads.iter().all(|d| d["kind"] == "road"),
        "{v}"
    );

    // Bad input gets a 400 that says what is wrong.
    for (path, needle) in [
        ("/v1/devices/xyz/status".to_string(), "64 hexadecimal"),
        (
            format!("/v1/devices/{}/status", "g".repeat(64)),
            "64 hexadecimal",
        ),
        ("/v1/devices/status".to_string(), "bbox"),
        (
            "/v1/devices/status?bbox=13.8,52.3,13.0,52.7".to_string(),
            "west < east",
        ),
        (
            format!("/v1/devices/status?bbox={BERLIN_BOX}&state=asleep"),
            "online, stale, offline",
        ),
        (
            format!("/v1/devices/status?bbox={BERLIN_BOX}&kind=drone"),
            "heartbeat, sensor, road",
        ),
    ] {
        let (status, v) = get(&base, &path).await;
        assert_eq!(status, 400, "{path}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{path}: {message}");
    }

    // Without the raw group, a dashcam's location is withheld, and the box leaves dashcams out.
    let mut private = qcfg.clone();
    private.auth.public = vec!["devices".into(), "sql".into()];
    let q2 = Query::start(private, Lake::open(&url).unwrap(), stop.clone())
        .await
        .unwrap();
    let base2 = format!("http://{}", q2.addr);
    let road = roads[0]["device_key"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        let (status, v) = get(&base2, &format!("/v1/devices/{road}/status")).await;
        if status == 200 || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(v["kind"], "road", "{v}");
    assert!(
        v["location"]
            .as_str()
            .is_some_and(|s| s.starts_with("withheld")),
        "{v}"
    );
    let (_, v) = get(&base2, &format!("/v1/devices/status?bbox={BERLIN_BOX}")).await;
    let kinds: BTreeSet<&str> = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert!(!kinds.is_empty() && !kinds.contains("road"), "{v}");

    // The devices stopped sending at `now`: one of them turns stale past ONLINE_S and offline
    // past OFFLINE_S, every answer's state agreeing with its age.
    let hotspot = want
        .iter()
        .find(|(_, w)| w.get("last_heartbeat").is_some())
        .map(|(k, _)| k.clone())
        .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(OFFLINE_S + 30);
    loop {
        let (status, v) = get(&base, &format!("/v1/devices/{hotspot}/status")).await;
        assert_eq!(status, 200, "{v}");
        let age = v["age_s"].as_f64().unwrap();
        let state = v["state"].as_str().unwrap().to_string();
        assert_eq!(state, state_for(age), "age {age}: {v}");
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if state == "offline" || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(seen, ["online", "stale", "offline"]);
    stop.cancel();
}
