//! Alerts end to end (issue #25): rules made over HTTP, a lake that a real processor writes from
//! broker traffic, the alerts role, and a webhook receiver on loopback that checks every
//! signature. Each firing reaches the receiver once, also when the receiver was down when it fired;
//! a restart of the role sends nothing again; a device heard again ends its firing with one
//! `resolved` event; bad rules get a 400 with their reason.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use hexpulse_lake::Lake;
use hexpulse_query::alerts::deliver::{self, RuleState};
use hexpulse_query::{Query, QueryConfig};
use hexpulse_testkit::scenario;
use hexpulse_testkit::testenv;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::pilots::call;
use crate::support::*;

const SECRET: &str = "a-webhook-secret-of-the-test";

/// What the receiver got: event id header, body, and whether the signature checked out.
type Got = Arc<Mutex<Vec<(String, Value, bool)>>>;

/// A webhook receiver on `addr` until `stop`: checks the signature (HMAC-SHA256 of
/// `timestamp.body` under [`SECRET`], computed here with the `hmac` crate) and answers 200.
async fn receiver(addr: std::net::SocketAddr, got: Got, stop: CancellationToken) {
    use hmac::{Hmac, Mac};
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let got = got.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                mac.update(format!("{}.", h("x-hexpulse-timestamp")).as_bytes());
                mac.update(&body);
                let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                got.lock().unwrap().push((
                    h("x-hexpulse-event-id"),
                    body,
                    h("x-hexpulse-signature") == want,
                ));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .unwrap();
    });
}

/// Every rule's stored state.
async fn states(lake: &Lake) -> Vec<RuleState> {
    let mut out = Vec::new();
    for p in lake.list(hexpulse_query::alerts::STATE).await.unwrap() {
        if let Some(b) = lake.get(&p).await.unwrap() {
            out.push(serde_json::from_slice(&b).unwrap());
        }
    }
    out
}

/// Starts the alerts role over `url`; cancel the token to stop it.
async fn start_role(cfg: &QueryConfig, url: &str) -> CancellationToken {
    let stop = CancellationToken::new();
    let alerts = deliver::open(
        cfg,
        Lake::open(url).unwrap(),
        hexpulse_common::health::Health::new(),
    )
    .await
    .unwrap();
    tokio::spawn(Arc::new(alerts).run(stop.clone()));
    stop
}

/// Column `c` of an operator's SQL answer.
async fn column(base: &str, sql: &str) -> Vec<String> {
    let (status, rows) = call(
        "POST",
        &format!("{base}/v1/sql"),
        "operator",
        Some(json!({ "sql": sql })),
    )
    .await;
    assert_eq!(status, 200, "{sql}: {rows}");
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["c"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until `f` holds; past `within`, fails with what `f` saw and the rules' states.
async fn wait_until<F: AsyncFn() -> Result<(), String>>(
    what: &str,
    lake: &Lake,
    within: Duration,
    f: F,
) {
    let deadline = Instant::now() + within;
    while let Err(saw) = f().await {
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}: {saw}; states: {:?}",
                states(lake).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn holds(ok: bool, saw: impl std::fmt::Debug) -> Result<(), String> {
    if ok { Ok(()) } else { Err(format!("{saw:?}")) }
}

/// An event's rule id and subject.
fn rule_and_subject(body: &Value) -> (String, String) {
    (
        body["rule"]["id"].as_str().unwrap_or_default().to_string(),
        body["subject"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_the_webhook_once_per_firing() {
    let Some(brokers) = testenv::broker_or_skip("alerts_reach_the_webhook_once_per_firing") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().to_str().unwrap().to_string();
    let mut cfg = QueryConfig::for_tests(&url);
    cfg.auth = crate::pg::roles(&[
        (
            "operator",
            &["pilots", "pilots_write", "alerts", "alerts_write", "sql"],
        ),
        ("planner", &["alerts", "sql"]),
    ]);
    cfg.alerts.interval = Duration::from_millis(300);
    cfg.alerts.backoff_min = Duration::from_millis(200);
    cfg.alerts.backoff_max = Duration::from_secs(1);
    cfg.alerts.webhook_schemes = vec!["http".into()];
    cfg.alerts.webhook_hosts = vec!["127.0.0.1".into()];
    cfg.status.refresh_interval = Duration::from_millis(200);
    let stop = CancellationToken::new();
    let q = Query::start(cfg.clone(), Lake::open(&url).unwrap(), stop.clone())
        .await
        .unwrap();
    let base = format!("http://{}", q.addr);

    // Readings made and received a minute ago (the heartbeats' device times end two minutes ago):
    // the devices are a minute silent, the pm2_5 readings (10 to 14) span 89 s, and the pilot's
    // cells had heartbeats in the window before the last two minutes but none in them.
    let made = now_ms() - 60_000;
    let sc = scenario::build(made, 90);
    let kafka = kafka(&brokers, "it-alerts", 1);
    produce(&kafka, &sc, made).await;
    let (_p, pstop) = start_processor_with(&kafka, "it-alerts-g", &sc, &url, |c| {
        c.epoch.idle_after = Duration::from_secs(1);
    })
    .await;
    let lake = Lake::open(&url).unwrap();
    let summary = wait_for(&lake, sc.records.len(), Duration::from_secs(90)).await;
    assert_matches(&summary, &sc);

    // A free port for the receiver, which is down at first.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let hook = format!("http://{port}/hook");
    let webhook = json!({"url": hook, "secret": SECRET});
    let devices: Vec<String> = sc
        .devices
        .iter()
        .filter(|d| matches!(d.kind, hexpulse_schemas::wire::KindName::Heartbeat))
        .take(2)
        .map(|d| d.public_key.clone())
        .collect();
    let rules = format!("{base}/v1/alerts/rules");

    // Bad rules: a 400 that says what is wrong, and nothing stored.
    let offline = |devices: Value, after: &str| json!({"name": "offline", "condition": {"kind": "device_offline", "devices": devices, "after": after}, "webhook": webhook});
    for (body, code, needle) in [
        (
            json!({"name": "x", "condition": {"kind": "hex_metric", "metric": "pm_25", "above": 35, "for": "1h"}, "webhook": webhook}),
            "unknown_metric",
            "pm2_5",
        ),
        (
            json!({"name": "x", "condition": {"kind": "hex_metric", "metric": "pm2_5", "above": 35, "for": "1h"}, "webhook": {"url": "http://169.254.169.254/latest", "secret": SECRET}}),
            "webhook_not_allowed",
            "host",
        ),
        (
            json!({"name": "x", "condition": {"kind": "hex_metric", "metric": "pm2_5", "above": 35, "for": "1h"}, "webhook": {"url": format!("https://{port}/hook"), "secret": SECRET}}),
            "webhook_not_allowed",
            "scheme",
        ),
        (
            json!({"name": "x", "condition": {"kind": "hex_metric", "metric": "pm2_5", "above": 35, "for": "1h"}, "webhook": {"url": "file:///etc/passwd", "secret": SECRET}}),
            "webhook_not_allowed",
            "scheme",
        ),
        (offline(json!(devices), "5s"), "bad_rule", "1m to 7days"),
        (offline(json!(["abc"]), "5m"), "bad_rule", "device key"),
        (
            json!({"name": "x", "condition": {"kind": "pilot_coverage_drop", "pilot": "0123456789abcdef", "drop_percent": 50}, "webhook": webhook}),
            "unknown_pilot",
            "0123456789abcdef",
        ),
        (
            json!({"name": "x", "condition": {"kind": "sunrise"}, "webhook": webhook}),
            "bad_rule",
            "sunrise",
        ),
        (
            json!({"name": "x", "condition": {"kind": "device_offline", "devices": devices, "after": "5m"}, "webhook": {"url": hook, "secret": "short"}}),
            "bad_rule",
            "secret",
        ),
    ] {
        let (status, v) = call("POST", &rules, "operator", Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let (status, v) = call(
        "POST",
        &rules,
        "planner",
        Some(offline(json!(devices), "1m")),
    )
    .await;
    assert_eq!(
        status, 403,
        "a planner reads rules but does not make them: {v}"
    );

    // The pilot: the cells of the heartbeats.
    let cells = column(
        &base,
        "SELECT DISTINCT h3_cell_to_string(h3_r8) AS c FROM heartbeat ORDER BY 1",
    )
    .await;
    let (status, pilot) = call(
        "POST",
        &format!("{base}/v1/pilots"),
        "operator",
        Some(json!({"name": "alerted", "cells": cells, "start": "2026-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(status, 201, "{pilot}");
    let pilot = pilot["id"].as_str().unwrap().to_string();
    // The hex of the pm2_5 readings, from SQL over the lake.
    let hexes: BTreeSet<String> = column(
        &base,
        "SELECT DISTINCT h3_cell_to_string(h3_r8) AS c FROM sensor WHERE metric = 'pm2_5'",
    )
    .await
    .into_iter()
    .collect();

    // The rules: each of these fires, but for `quiet` (pm2_5 fell to 10 after each 14, the newest
    // reading too). A device the lake never heard of does not fire.
    let nobody = "77".repeat(32);
    let mut want: BTreeSet<(String, String)> = BTreeSet::new();
    let mut ids = BTreeMap::new();
    for (name, condition) in [
        (
            "offline",
            json!({"kind": "device_offline", "devices": [devices[0], devices[1], nobody], "after": "1m"}),
        ),
        (
            "air",
            json!({"kind": "hex_metric", "metric": "pm2_5", "above": 9.5, "for": "1m"}),
        ),
        (
            "quiet",
            json!({"kind": "hex_metric", "metric": "pm2_5", "above": 12, "for": "1m"}),
        ),
        (
            "coverage",
            json!({"kind": "pilot_coverage_drop", "pilot": pilot, "drop_percent": 50, "window": "2m"}),
        ),
    ] {
        let body = json!({"name": name, "condition": condition, "webhook": webhook});
        let (status, v) = call("POST", &rules, "operator", Some(body)).await;
        assert_eq!(status, 201, "{v}");
        assert!(v["webhook"].get("secret").is_none(), "{v}");
        ids.insert(name, v["id"].as_str().unwrap().to_string());
    }
    for d in &devices {
        want.insert((ids["offline"].clone(), d.clone()));
    }
    for h in &hexes {
        want.insert((ids["air"].clone(), h.clone()));
    }
    want.insert((ids["coverage"].clone(), pilot.clone()));
    let (status, listed) = call("GET", &rules, "planner", None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["rules"].as_array().unwrap().len(), 4, "{listed}");
    assert!(!listed.to_string().contains(SECRET), "{listed}");

    // The role fires while the receiver is down: the events wait in the stored outbox, retried.
    let role = start_role(&cfg, &url).await;
    wait_until(
        "the events to wait, retried",
        &lake,
        Duration::from_secs(60),
        async || {
            let s = states(&lake).await;
            let pending: Vec<_> = s.iter().flat_map(|s| &s.outbox).collect();
            holds(
                pending.len() == want.len() && pending.iter().all(|p| p.attempts >= 2),
                &want,
            )
        },
    )
    .await;

    // The receiver comes back: each firing arrives once, signed.
    let got: Got = Arc::default();
    let rstop = CancellationToken::new();
    receiver(port, got.clone(), rstop.clone()).await;
    let subjects = |got: &Got| -> BTreeSet<(String, String)> {
        got.lock()
            .unwrap()
            .iter()
            .map(|(_, b, _)| rule_and_subject(b))
            .collect()
    };
    wait_until(
        "every firing at the receiver",
        &lake,
        Duration::from_secs(30),
        async || {
            let seen = subjects(&got);
            holds(seen == want, (&seen, &want))
        },
    )
    .await;
    // A few more rounds: nothing new, nothing twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let check = |got: &Got| {
        let got = got.lock().unwrap();
        let ids: BTreeSet<&str> = got.iter().map(|(id, _, _)| id.as_str()).collect();
        assert_eq!(ids.len(), got.len(), "an event arrived twice: {got:?}");
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (id, body, signed) in got.iter() {
            assert!(signed, "a bad signature: {body}");
            assert_eq!(body["event_id"], id.as_str(), "{body}");
            assert_eq!(body["state"], "firing", "{body}");
        }
        got.iter()
            .map(|(id, _, _)| id.clone())
            .collect::<BTreeSet<_>>()
    };
    let delivered = check(&got);
    assert!(
        states(&lake).await.iter().all(|s| s.outbox.is_empty()),
        "delivered events leave the outbox"
    );
    let body = got
        .lock()
        .unwrap()
        .iter()
        .find(|(_, b, _)| b["rule"]["id"] == ids["coverage"])
        .map(|(_, b, _)| b.clone())
        .unwrap();
    assert_eq!(body["details"]["covered_share_last"], 0.0, "{body}");
    assert_eq!(body["rule"]["kind"], "pilot_coverage_drop", "{body}");

    // A restart of the role sends nothing again: the firings are in its stored state.
    role.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let role = start_role(&cfg, &url).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(check(&got), delivered);
    let firing: usize = states(&lake).await.iter().map(|s| s.firing.len()).sum();
    assert_eq!(firing, want.len());

    // devices[0] is heard again: its firing ends with one `resolved` event, signed, that names the
    // firing it ends; devices[1] stays offline. (The pilot's coverage may recover too.)
    let heard = now_ms();
    produce(&kafka, &sc.heartbeat_of(0, 1_000, heard), heard).await;
    let offline_of = |subject: &str| (ids["offline"].clone(), subject.to_string());
    let resolved = |got: &Got| -> Vec<Value> {
        got.lock()
            .unwrap()
            .iter()
            .filter(|(_, b, _)| b["state"] == "resolved")
            .map(|(_, b, _)| b.clone())
            .collect()
    };
    wait_until(
        "devices[0]'s firing to end at the receiver",
        &lake,
        Duration::from_secs(60),
        async || {
            let ended: BTreeSet<(String, String)> =
                resolved(&got).iter().map(rule_and_subject).collect();
            holds(ended.contains(&offline_of(&devices[0])), &ended)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    {
        let got = got.lock().unwrap();
        let ids: BTreeSet<&str> = got.iter().map(|(id, _, _)| id.as_str()).collect();
        assert_eq!(ids.len(), got.len(), "an event arrived twice: {got:?}");
        assert!(got.iter().all(|(_, _, signed)| *signed), "{got:?}");
    }
    for body in resolved(&got) {
        let firing = body["firing_event_id"].as_str().unwrap();
        assert!(delivered.contains(firing), "ends a firing it sent: {body}");
        assert_eq!(body["event_id"], deliver::resolved_id(firing), "{body}");
        assert!(
            (body["rule"]["id"].as_str(), body["subject"].as_str())
                != (Some(ids["offline"].as_str()), Some(devices[1].as_str())),
            "devices[1] is still silent: {body}"
        );
    }
    // Only the offline rule has device keys for subjects.
    let still: BTreeSet<String> = states(&lake)
        .await
        .iter()
        .flat_map(|s| s.firing.keys().cloned())
        .collect();
    assert!(!still.contains(&devices[0]), "devices[0] fires: {still:?}");
    assert!(still.contains(&devices[1]), "devices[1] stopped: {still:?}");

    // Deleting a rule deletes its state.
    let (status, _) = call(
        "DELETE",
        &format!("{rules}/{}", ids["quiet"]),
        "operator",
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, v) = call("GET", &format!("{rules}/{}", ids["quiet"]), "planner", None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("unknown_rule"))
    );

    role.cancel();
    rstop.cancel();
    pstop.cancel();
    stop.cancel();
}
