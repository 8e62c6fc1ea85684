//! #21: `make up` stopped with Ctrl-C and started again goes on: the demo fleet's readings keep
//! landing, and none lands as `duplicate` (before, the demo restarted its sequence numbers at 1, so
//! every reading after a restart was a duplicate and the map froze) or is rejected at all (before,
//! the demo's dashcams jumped back to where they started, and landed as `impossible_speed`).

use std::time::{Duration, Instant};

use hexpulse_testkit::testenv;

use crate::up::{ADMIN_TOKEN, Up, accounting_layer};

/// Runs `f` to completion on a runtime of its own (the test itself is synchronous).
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The rows of `text` (as the admin role), or `null` when the query service does not answer.
pub(crate) fn sql(query: &str, text: &str) -> serde_json::Value {
    block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{query}/v1/sql"))
            .bearer_auth(ADMIN_TOKEN)
            .body(text.to_string())
            .send()
            .await;
        let Ok(r) = r else {
            return serde_json::Value::Null;
        };
        r.json().await.unwrap_or_default()
    })
}

fn count(query: &str, text: &str) -> u64 {
    sql(query, text)[0]["n"].as_u64().unwrap_or(0)
}

fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < within, "{what} within {within:?}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn make_up_started_again_goes_on_without_duplicates() {
    let cache = tempfile::tempdir().unwrap();
    // `make up`'s broker: durable sqlite storage, kept across the restart.
    let Some(broker) = testenv::OwnBroker::for_test("up_restart", cache.path()) else {
        return;
    };
    broker.start();
    let brokers = broker.address();
    let layer = accounting_layer("");
    let args = ["--rate", "200"];
    let up = Up::start("it-restart", &brokers, &args, Some(&layer));
    // The admin token `up` printed opens the registry (README, "Adding a device"); another does not.
    let devices = |token: &str| {
        block_on(async {
            let r = reqwest::Client::new()
                .get(format!("{}/v1/admin/devices", up.ingest))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let n = r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v.as_array().map(Vec::len));
            (status, n)
        })
    };
    let token = up.admin_token.clone().expect("`up` printed an admin token");
    let (status, listed) = devices(&token);
    assert_eq!(status, 200);
    assert!(
        listed.is_some_and(|n| n >= 300),
        "the demo fleet's 300 devices are listed: {listed:?}"
    );
    assert_eq!(devices("not-the-token").0, 401);
    // The same token opens the query service's /metrics (its admin role); none does not.
    let metrics = |token: Option<&str>| {
        block_on(async {
            let mut r = reqwest::Client::new().get(format!("{}/metrics", up.query));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r.send().await.unwrap().status().as_u16()
        })
    };
    assert_eq!(metrics(Some(&token)), 200);
    assert_eq!(metrics(None), 401);
    let heartbeats = "SELECT count(*) AS n FROM heartbeat";
    wait_until("demo readings in the lake", Duration::from_secs(60), || {
        count(&up.query, heartbeats) > 0
    });
    // Long enough for the faster dashcams to be more than a few hundred metres from where they
    // started: a demo that sent them back there at the restart shows up as `impossible_speed`.
    std::thread::sleep(Duration::from_secs(50));
    let up = up.restart(&brokers, &args);
    let before = count(&up.query, heartbeats);
    eprintln!("{before} heartbeats before the restart's own readings");
    wait_until(
        "new readings after the restart",
        Duration::from_secs(60),
        || count(&up.query, heartbeats) > before,
    );
    std::thread::sleep(Duration::from_secs(10));
    // The demo sends only valid readings: after a restart none is a `duplicate` (sequence numbers
    // go on) and no dashcam is `impossible_speed` (it drives on from where it was).
    let rejected = count(&up.query, "SELECT count(*) AS n FROM rejected");
    let after = count(&up.query, heartbeats);
    eprintln!("{after} heartbeats, {rejected} rejected");
    assert_eq!(
        rejected,
        0,
        "demo readings were rejected across the restart: {}",
        sql(
            &up.query,
            "SELECT reason, count(*) AS n FROM rejected GROUP BY reason"
        )
    );
}
