//! The Arrow Flight SQL door with ADBC (Python `adbc-driver-flightsql` and pyarrow, the driver BI
//! tools and notebooks use), over a lake the processors wrote from broker traffic: Arrow answers
//! equal `POST /v1/sql`'s, prepared statements with parameters, a million rows streamed past the
//! HTTP door's answer limit, and the rules of every door: tokens (bearer and the basic-auth
//! handshake), the `raw` group, read-only statements, the time limit, and a dropped stream that
//! frees its slot at once.

use std::process::Stdio;
use std::time::Duration;

use hexpulse_lake::Lake;
use hexpulse_query::{Query, QueryConfig};
use hexpulse_testkit::testenv;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::pg::{
    RUNAWAY, Service, auth, http_rows, http_sql, norm, processed_lake, running, slots_free,
};
use crate::support::now_ms;

fn request(s: &Service, token: &str, queries: Value) -> Value {
    json!({"port": s.port, "token": token, "queries": queries})
}

/// Starts scripts/flight_client.py (ADBC) with `request`; it prints its JSON report.
fn spawn_client(python: &str, request: &Value) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(python)
        .arg(testenv::repo_root().join("scripts/flight_client.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run flight_client.py");
    let mut stdin = child.stdin.take().unwrap();
    let text = request.to_string();
    tokio::spawn(async move {
        let _ = stdin.write_all(text.as_bytes()).await;
    });
    child
}

pub(crate) async fn adbc(python: &str, request: Value) -> Value {
    let out = spawn_client(python, &request)
        .wait_with_output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "flight_client.py: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).expect("flight_client.py's JSON")
}

/// An ADBC result (Arrow IPC) as JSON rows, as the HTTP door writes them.
fn arrow_rows(result: &Value) -> (Vec<String>, Vec<Vec<String>>) {
    assert!(result.get("error").is_none(), "ADBC: {result}");
    let bytes = hex::decode(result["ipc"].as_str().unwrap()).unwrap();
    let reader =
        hexpulse_query::datafusion::arrow::ipc::reader::StreamReader::try_new(&bytes[..], None)
            .unwrap();
    let columns: Vec<String> = reader
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut json = Vec::new();
    {
        let mut w = hexpulse_query::datafusion::arrow::json::ArrayWriter::new(&mut json);
        for batch in reader {
            w.write(&batch.unwrap()).unwrap();
        }
        w.finish().unwrap();
    }
    let rows: Value = if json.is_empty() {
        json!([])
    } else {
        serde_json::from_slice(&json).unwrap()
    };
    let rows = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| columns.iter().map(|c| norm(&r[c.as_str()])).collect())
        .collect();
    (columns, rows)
}

fn error_of(result: &Value) -> &str {
    result["error"]
        .as_str()
        .unwrap_or_else(|| panic!("an error: {result}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_answers_as_http_does_under_its_rules() {
    let test = "adbc_answers_as_http_does_under_its_rules";
    let Some(brokers) = testenv::broker_or_skip(test) else {
        return;
    };
    let Some(python) = testenv::python_or_skip(test) else {
        return;
    };
    let now = now_ms();
    let (_dir, url) = processed_lake(&brokers, "it-flight", now).await;
    let mut cfg = QueryConfig::for_tests(&url);
    cfg.auth = auth();
    cfg.flight_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.query_timeout = Duration::from_secs(8);
    cfg.max_rows = 2_000_000;
    // HTTP holds an answer before sending it: a million rows are past its limit. Flight streams.
    cfg.max_answer_bytes = 1 << 20;
    cfg.max_concurrent_queries = 1;
    let stop = CancellationToken::new();
    let q = Query::start(cfg, Lake::open(&url).unwrap(), stop.clone())
        .await
        .unwrap();
    let s = Service {
        base: format!("http://{}", q.addr),
        port: q.flight_addr.expect("flight_listen was set").port(),
    };

    // The README's SQL: ADBC's Arrow tables hold what HTTP answers, with the bearer token and with
    // the basic-auth handshake alike.
    let readme = [
        "SELECT reason, count(*) AS n FROM rejected GROUP BY reason ORDER BY reason",
        "SELECT h3_cell_to_string(h3_cell_to_parent(h3_r8, 6)) AS cell, count(*) AS n FROM heartbeat \
         GROUP BY 1 ORDER BY n DESC, cell LIMIT 10",
        "SELECT device_key, max(event_time) AS newest, avg(signal_dbm) AS signal FROM heartbeat \
         GROUP BY device_key ORDER BY device_key",
    ];
    let queries: Value = readme.iter().map(|q| json!({"sql": q})).collect();
    let bearer = adbc(&python, request(&s, "secret-admin", queries.clone())).await;
    let mut basic = request(&s, "secret-admin", queries);
    basic["basic"] = json!(true);
    let basic = adbc(&python, basic).await;
    for (i, q) in readme.iter().enumerate() {
        let (status, answer) = http_sql(&s, "secret-admin", q).await;
        assert_eq!(status, 200, "{q}: {answer}");
        for (how, report) in [("bearer", &bearer), ("basic", &basic)] {
            let (columns, rows) = arrow_rows(&report["results"][i]);
            assert!(!rows.is_empty(), "{how}, {q}: no rows");
            assert_eq!(rows, http_rows(&answer, &columns), "{how}, {q}");
        }
    }

    // Browsing, as generic clients do: the server's info, and the tables each role may read.
    for (role, private_listed) in [("planner", false), ("admin", true)] {
        let mut browse = request(&s, &format!("secret-{role}"), json!([]));
        browse["browse"] = json!(true);
        let report = adbc(&python, browse).await;
        assert!(report["info"].to_string().contains("hexpulse"), "{report}");
        let tables: Vec<&str> = report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert!(tables.contains(&"hexpulse.lake.heartbeat"), "{tables:?}");
        assert!(tables.contains(&"hexpulse.committed.sensor"), "{tables:?}");
        assert_eq!(
            tables.contains(&"hexpulse.lake.rejected"),
            private_listed,
            "{role}: {tables:?}"
        );
    }

    // A prepared statement with parameters (ADBC prepares it and binds the values).
    let (_, cells) = http_sql(
        &s,
        "secret-planner",
        "SELECT DISTINCT h3_cell_to_string(h3_cell_to_parent(h3_r8, 6)) AS cell FROM heartbeat \
         ORDER BY cell LIMIT 1",
    )
    .await;
    let cell = cells[0]["cell"].as_str().unwrap().to_string();
    let prepared = "SELECT device_key, count(*) AS n FROM heartbeat \
                    WHERE h3_cell_to_string(h3_cell_to_parent(h3_r8, 6)) = $1 AND seq >= $2 \
                    GROUP BY device_key ORDER BY device_key";
    let report = adbc(
        &python,
        request(
            &s,
            "secret-planner",
            json!([{"sql": prepared, "params": [cell, 0]}]),
        ),
    )
    .await;
    let literal = prepared
        .replacen("$1", &format!("'{cell}'"), 1)
        .replacen("$2", "0", 1);
    let (status, http) = http_sql(&s, "secret-planner", &literal).await;
    assert_eq!(status, 200, "{http}");
    let (columns, rows) = arrow_rows(&report["results"][0]);
    assert!(!rows.is_empty());
    assert_eq!(rows, http_rows(&http, &columns), "prepared");

    // A million rows stream through Flight; HTTP, which holds its answer, refuses them.
    let million = "SELECT v, v * 2 AS w FROM generate_series(1, 1000000) AS t(v)";
    let report = adbc(
        &python,
        request(&s, "secret-planner", json!([{"sql": million}])),
    )
    .await;
    assert_eq!(
        report["results"][0]["rows"], 1_000_000,
        "{}",
        report["results"][0]["error"]
    );
    let (status, answer) = http_sql(&s, "secret-planner", million).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (413, Some("answer_limit"))
    );

    // Refusals, each with its gRPC status.
    let wrong = adbc(
        &python,
        request(&s, "not-a-token", json!([{"sql": "SELECT 1"}])),
    )
    .await;
    let wrong = wrong["connect_error"]
        .as_str()
        .or(wrong["results"][0]["error"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(wrong.to_lowercase().contains("unauthenticated"), "{wrong}");
    let refused = [
        ("SELECT count(*) FROM rejected", "permission"),
        ("CREATE TABLE t (a INT)", "permission"),
        ("COPY heartbeat TO '/tmp/out.csv'", "permission"),
        ("SELEC 1", "invalid"),
    ];
    let queries: Value = refused.iter().map(|(q, _)| json!({"sql": q})).collect();
    let report = adbc(&python, request(&s, "secret-planner", queries)).await;
    for (i, (q, want)) in refused.iter().enumerate() {
        let e = error_of(&report["results"][i]).to_lowercase();
        assert!(e.contains(want), "{q}: {e}");
    }
    let operator = adbc(
        &python,
        request(&s, "secret-operator", json!([{"sql": "SELECT 1"}])),
    )
    .await;
    let e = operator["connect_error"]
        .as_str()
        .or(operator["results"][0]["error"].as_str())
        .unwrap_or_default()
        .to_lowercase();
    assert!(e.contains("permission"), "{e}");

    // A dropped stream (the client killed mid-query) frees the slot at once, well before the
    // time limit; the time limit ends a query whose client waits.
    let mut child = spawn_client(
        &python,
        &request(&s, "secret-planner", json!([{"sql": RUNAWAY}])),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while running(&s).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the query never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().await.unwrap();
    assert!(
        slots_free(&s, Duration::from_secs(3)).await,
        "the slot is still held"
    );
    let report = adbc(
        &python,
        request(&s, "secret-planner", json!([{"sql": RUNAWAY}])),
    )
    .await;
    let e = error_of(&report["results"][0]).to_lowercase();
    assert!(e.contains("deadline") && e.contains("longer than"), "{e}");
    stop.cancel();
}
