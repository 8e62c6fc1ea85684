//! The PostgreSQL door with the clients users run: psql (the simple query protocol) and psycopg (the
//! extended protocol, prepared statements with parameters), over a lake the processors wrote from
//! broker traffic. Their answers equal `POST /v1/sql`'s, and the HTTP door's rules hold on this one:
//! tokens and roles, the `raw` group, read-only statements, the time limit, rates, and cancels
//! that free the query's slot at once.

use std::process::Stdio;
use std::time::Duration;

use hexpulse_common::ratelimit::RateLimit;
use hexpulse_lake::Lake;
use hexpulse_query::config::{AuthConfig, TokenConfig};
use hexpulse_query::{Query, QueryConfig};
use hexpulse_testkit::{scenario, testenv};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::support::*;

/// A query that runs for minutes unless stopped.
pub(crate) const RUNAWAY: &str =
    "SELECT sum(v * v % 7) AS s FROM generate_series(1, 3000000000) AS t(v)";

pub(crate) fn sha(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Debian's psql, which `make test` installs (postgresql-client); `None` (skip) outside it.
pub(crate) fn psql_or_skip(test: &str) -> Option<String> {
    let found = std::env::var("HEXPULSE_PSQL")
        .ok()
        .filter(|p| !p.is_empty())
        .or_else(|| {
            std::path::Path::new("/usr/bin/psql")
                .exists()
                .then(|| "/usr/bin/psql".to_string())
        });
    if found.is_none() {
        assert!(
            std::env::var_os("HEXPULSE_REQUIRE_BROKER").is_none(),
            "{test}: make test must install psql (scripts/test.sh)"
        );
        eprintln!("\n*** SKIPPING {test}: psql is not installed. Run `make test`. ***\n");
    }
    found
}

/// `roles` (name, endpoint groups), each with a token `secret-<role>` named `<role>-token`.
pub(crate) fn roles(roles: &[(&str, &[&str])]) -> AuthConfig {
    let mut auth = AuthConfig::default();
    for (role, groups) in roles {
        auth.roles.insert(
            role.to_string(),
            groups.iter().map(|g| g.to_string()).collect(),
        );
        auth.tokens.push(token(
            &format!("{role}-token"),
            role,
            &format!("secret-{role}"),
        ));
    }
    auth
}

/// A token `name` of `role`, whose secret is `secret`.
pub(crate) fn token(name: &str, role: &str, secret: &str) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        role: role.into(),
        sha256: sha(secret),
    }
}

/// Roles as a deployment has them: `planner` may run SQL, `admin` everything (raw rows too),
/// `operator` only the coverage endpoints.
pub(crate) fn auth() -> AuthConfig {
    roles(&[
        ("operator", &["coverage"]),
        ("planner", &["sql"]),
        ("admin", &["*"]),
    ])
}

pub(crate) struct Service {
    pub(crate) base: String,
    pub(crate) port: u16,
}

async fn start(cfg: QueryConfig, url: &str, stop: &CancellationToken) -> Service {
    let q = Query::start(cfg, Lake::open(url).unwrap(), stop.clone())
        .await
        .unwrap();
    Service {
        base: format!("http://{}", q.addr),
        port: q.pg_addr.expect("pg_listen was set").port(),
    }
}

/// `POST /v1/sql` as `token`: the status and the JSON answer.
pub(crate) async fn http_sql(s: &Service, token: &str, sql: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/sql", s.base))
        .bearer_auth(token)
        .body(sql.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// psql `-c sql` as `role`: whether it succeeded, its CSV output and its errors.
async fn psql(psql: &str, s: &Service, role: &str, sql: &str) -> (bool, String, String) {
    let out = tokio::process::Command::new(psql)
        .args([
            "-X",
            "--csv",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
        ])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &s.port.to_string(),
            "-U",
            role,
            "-d",
            "hexpulse",
        ])
        .args(["-c", sql])
        .env("PGPASSWORD", format!("secret-{role}"))
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// scripts/pg_client.py (psycopg) with `request` (its port and password filled in for `role`).
async fn psycopg(python: &str, s: &Service, role: &str, mut request: Value) -> Value {
    request["port"] = json!(s.port);
    request["user"] = json!(role);
    if request.get("password").is_none() {
        request["password"] = json!(format!("secret-{role}"));
    }
    let mut child = tokio::process::Command::new(python)
        .arg(testenv::repo_root().join("scripts/pg_client.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pg_client.py");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(request.to_string().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pg_client.py: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).expect("pg_client.py's JSON")
}

/// One value as text that the three clients agree on: numbers to 9 significant digits,
/// timestamps without a `T` or trailing zeros, booleans as `true`/`false`, NULL as empty.
pub(crate) fn norm(v: &Value) -> String {
    let text = match v {
        Value::Null => return String::new(),
        Value::Bool(b) => return b.to_string(),
        Value::Number(n) => return format!("{:.9e}", n.as_f64().unwrap()),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if let Ok(f) = text.parse::<f64>() {
        return format!("{f:.9e}");
    }
    match text.as_str() {
        "t" => return "true".into(),
        "f" => return "false".into(),
        _ => {}
    }
    // Timestamps in UTC, as HTTP (`2026-12-03T12:00:00.5Z`) and PostgreSQL (`... 12:00:00.500000+00`)
    // write them.
    let t = text.replacen('T', " ", 1);
    let t = t
        .strip_suffix('Z')
        .or_else(|| t.strip_suffix("+00:00"))
        .or_else(|| t.strip_suffix("+00"))
        .unwrap_or(&t);
    if let Ok(ts) = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f") {
        return ts.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    }
    text
}

/// The HTTP answer's rows in `columns`' order, normalised.
pub(crate) fn http_rows(answer: &Value, columns: &[String]) -> Vec<Vec<String>> {
    answer
        .as_array()
        .unwrap_or_else(|| panic!("an array of rows: {answer}"))
        .iter()
        .map(|row| columns.iter().map(|c| norm(&row[c.as_str()])).collect())
        .collect()
}

fn psql_rows(csv_text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_reader(csv_text.as_bytes());
    let columns = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r
        .records()
        .map(|rec| {
            rec.unwrap()
                .iter()
                .map(|f| norm(&Value::String(f.to_string())))
                .collect()
        })
        .collect();
    (columns, rows)
}

fn psycopg_rows(result: &Value) -> (Vec<String>, Vec<Vec<String>>) {
    assert!(result.get("error").is_none(), "psycopg: {result}");
    let columns = result["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let rows = result["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(norm).collect())
        .collect();
    (columns, rows)
}

/// Whether psycopg's login was refused with `state`. libpq reports a failed login without its
/// SQLSTATE, so the door repeats it in the error's detail.
fn login_refused(answer: &Value, state: &str) -> bool {
    answer["connect_error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains(&format!("SQLSTATE {state}")))
}

fn sqlstate(result: &Value) -> &str {
    result["error"]["sqlstate"]
        .as_str()
        .unwrap_or_else(|| panic!("an error with a SQLSTATE: {result}"))
}

/// `/readyz`'s count of plans running now.
pub(crate) async fn running(s: &Service) -> u64 {
    let v: Value = reqwest::get(format!("{}/readyz", s.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["running_queries"].as_u64().unwrap_or(u64::MAX)
}

/// Waits up to `within` for no plan to run; false if one still runs then.
pub(crate) async fn slots_free(s: &Service, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if running(s).await == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A lake the processors wrote from broker traffic (a scenario of every kind of reading, valid and
/// not), and its URL.
pub(crate) async fn processed_lake(
    brokers: &str,
    test: &str,
    now: i64,
) -> (tempfile::TempDir, String) {
    let sc = scenario::build(now, 10);
    let kafka = kafka(brokers, test, 2);
    produce(&kafka, &sc, now).await;
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().to_str().unwrap().to_string();
    let (_p, stop_processor) =
        start_processor(&kafka, &format!("{}-g", kafka.raw_topic), &sc, &url).await;
    let lake = Lake::open(&url).unwrap();
    let summary = wait_for(&lake, sc.records.len(), Duration::from_secs(90)).await;
    assert_matches(&summary, &sc);
    stop_processor.cancel();
    (dir, url)
}

/// Grafana's macros in `sql` for the window `from_ms`..`to_ms`, expanded as its PostgreSQL data
/// source expands them: `$__timeFilter(col)` and `$__timeGroupAlias(col, 'interval')`.
fn grafana_macros(sql: &str, from_ms: i64, to_ms: i64) -> String {
    let rfc = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let mut out = sql.to_string();
    while let Some(at) = out.find("$__") {
        let open = at + out[at..].find('(').unwrap();
        let close = open + out[open..].find(')').unwrap();
        let name = &out[at + 3..open];
        let args: Vec<&str> = out[open + 1..close].split(',').map(str::trim).collect();
        let expanded = match name {
            "timeFilter" => format!(
                "{} BETWEEN '{}' AND '{}'",
                args[0],
                rfc(from_ms),
                rfc(to_ms)
            ),
            "timeGroupAlias" => {
                let step = humantime::parse_duration(args[1].trim_matches('\'')).unwrap();
                let s = step.as_secs();
                format!("floor(extract(epoch from {})/{s})*{s} AS \"time\"", args[0])
            }
            other => panic!("a Grafana macro the test does not expand: {other}"),
        };
        out.replace_range(at..=close, &expanded);
    }
    out
}

/// Every panel query of grafana/dashboards/*.json: (dashboard and panel title, expanded SQL).
fn dashboard_queries(from_ms: i64, to_ms: i64) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dir = testenv::repo_root().join("grafana/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files {
        let d: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for panel in d["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let sql = target["rawSql"].as_str().expect("a panel query in rawSql");
                out.push((
                    format!("{} / {}", d["title"], panel["title"]),
                    grafana_macros(sql, from_ms, to_ms),
                ));
            }
        }
    }
    out
}

/// What the clients' table browsers send, and what they must find: psql's `\dt` and `\d`, Grafana's
/// PostgreSQL data source (its query builder's table and column lists, as Grafana 10 and later
/// spell them), and the `pg_catalog` joins DBeaver and JDBC clients make (`'name'::regclass`).
/// Each role finds the tables it may read, and no more.
async fn browsing(psql_bin: &str, python: &str, s: &Service) {
    // psql's own commands (the queries psql builds over pg_class, pg_namespace, pg_attribute).
    for (role, sees_raw) in [("admin", true), ("planner", false)] {
        let (ok, out, err) = psql(psql_bin, s, role, "\\dt").await;
        assert!(ok, "{role}: \\dt: {err}");
        let (columns, rows) = psql_rows(&out);
        assert_eq!(columns[..2], ["Schema", "Name"], "{out}");
        let names: Vec<String> = rows.iter().map(|r| format!("{}.{}", r[0], r[1])).collect();
        for t in [
            "lake.heartbeat",
            "lake.sensor",
            "committed.heartbeat",
            "lake.freshness",
        ] {
            assert!(
                names.contains(&t.to_string()),
                "{role}: \\dt lists {t}: {names:?}"
            );
        }
        for t in ["lake.rejected", "lake.road"] {
            assert_eq!(
                names.contains(&t.to_string()),
                sees_raw,
                "{role}: {t} in {names:?}"
            );
        }
        assert!(
            !names.iter().any(|n| n.starts_with("pg_catalog.")),
            "{names:?}"
        );
    }
    let (ok, out, err) = psql(psql_bin, s, "planner", "\\d sensor").await;
    assert!(ok, "\\d sensor: {err}");
    for column in ["device_key", "metric", "unit", "event_time", "h3_r8"] {
        assert!(out.contains(column), "\\d sensor lists {column}: {out}");
    }
    let (ok, out, err) = psql(psql_bin, s, "planner", "\\d rejected").await;
    assert!(
        !ok || !out.contains("reason"),
        "a planner's \\d must not describe rejected: {out}{err}"
    );

    // Grafana's query builder: the tables (schema-qualified, as it shows tables outside the search
    // path) and a table's columns.
    let search_path = "SELECT CASE WHEN trim(s[i]) = '\"$user\"' THEN user ELSE trim(s[i]) END \
         FROM generate_series(array_lower(string_to_array(current_setting('search_path'),','),1), \
         array_upper(string_to_array(current_setting('search_path'),','),1)) as i, \
         string_to_array(current_setting('search_path'),',') s";
    let tables = format!(
        "SELECT CASE WHEN quote_ident(table_schema) IN ({search_path}) THEN quote_ident(table_name) \
         ELSE quote_ident(table_schema) || '.' || quote_ident(table_name) END AS \"table\" \
         FROM information_schema.tables WHERE quote_ident(table_schema) NOT IN \
         ('information_schema', 'pg_catalog', '_timescaledb_cache', '_timescaledb_catalog', \
         '_timescaledb_internal', '_timescaledb_config', 'timescaledb_information', \
         'timescaledb_experimental') ORDER BY CASE WHEN quote_ident(table_schema) IN \
         ({search_path}) THEN 0 ELSE 1 END, 1"
    );
    let columns = format!(
        "SELECT quote_ident(column_name) AS \"column\", data_type AS \"type\" \
         FROM information_schema.columns WHERE CASE WHEN array_length(parse_ident('lake.sensor'),1) = 2 \
         THEN quote_ident(table_schema) = (parse_ident('lake.sensor'))[1] \
         AND quote_ident(table_name) = (parse_ident('lake.sensor'))[2] \
         ELSE quote_ident(table_name) = 'lake.sensor' AND quote_ident(table_schema) IN ({search_path}) END"
    );
    // DBeaver's and JDBC's kind: namespaces, then a table's columns through a regclass cast.
    let namespaces = "SELECT n.oid, n.nspname FROM pg_catalog.pg_namespace n ORDER BY n.nspname";
    let attributes = "SELECT attname, atttypid FROM pg_catalog.pg_class AS cls \
         INNER JOIN pg_catalog.pg_attribute AS attr ON cls.oid = attr.attrelid \
         INNER JOIN pg_catalog.pg_type AS typ ON attr.atttypid = typ.oid \
         WHERE attr.attnum >= 0 AND cls.oid = 'sensor'::regclass::oid ORDER BY attr.attnum";
    let queries: Vec<Value> = [tables.as_str(), &columns, namespaces, attributes]
        .iter()
        .map(|q| json!({"sql": q}))
        .collect();
    let answer = psycopg(python, s, "planner", json!({"queries": queries})).await;
    let values = |i: usize, column: usize| -> Vec<String> {
        let result = &answer["results"][i];
        assert!(result.get("error").is_none(), "query {i}: {result}");
        let (_, rows) = psycopg_rows(result);
        rows.into_iter().map(|r| r[column].clone()).collect()
    };
    let tables = values(0, 0);
    assert!(
        tables.contains(&"lake.sensor".to_string()),
        "Grafana's tables: {tables:?}"
    );
    assert!(
        !tables.iter().any(|t| t.ends_with(".rejected")),
        "{tables:?}"
    );
    let columns = values(1, 0);
    for c in ["metric", "unit", "device_key"] {
        assert!(
            columns.contains(&c.to_string()),
            "Grafana's columns of lake.sensor: {columns:?}"
        );
    }
    let schemas = values(2, 1);
    assert!(
        schemas.contains(&"lake".to_string()),
        "namespaces: {schemas:?}"
    );
    let attributes = values(3, 0);
    assert!(
        attributes.contains(&"metric".to_string()),
        "sensor's attributes: {attributes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_psycopg_answer_as_http_does_under_its_rules() {
    let test = "psql_and_psycopg_answer_as_http_does_under_its_rules";
    let Some(brokers) = testenv::broker_or_skip(test) else {
        return;
    };
    let Some(python) = testenv::python_or_skip(test) else {
        return;
    };
    let Some(psql_bin) = psql_or_skip(test) else {
        return;
    };
    let now = now_ms();
    let (_dir, url) = processed_lake(&brokers, "it-pg", now).await;

    let mut cfg = QueryConfig::for_tests(&url);
    cfg.auth = auth();
    cfg.pg_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.query_timeout = Duration::from_secs(20);
    cfg.max_concurrent_queries = 1;
    let stop = CancellationToken::new();
    let s = start(cfg, &url, &stop).await;

    // The README's SQL (H3 functions, raw rows for the admin role, the committed schema): psql and
    // psycopg answer what HTTP answers.
    let readme = [
        "SELECT reason, count(*) AS n FROM rejected GROUP BY reason ORDER BY reason",
        "SELECT h3_cell_to_string(h3_cell_to_parent(h3_r8, 6)) AS cell, count(*) AS n FROM heartbeat \
         GROUP BY 1 ORDER BY n DESC, cell LIMIT 10",
        "SELECT count(*) AS n FROM committed.heartbeat",
        "SELECT device_key, max(event_time) AS newest, avg(signal_dbm) AS signal, \
         h3_cell_to_lat(min(h3_r8)) AS lat FROM heartbeat GROUP BY device_key ORDER BY device_key",
    ];
    let queries: Vec<Value> = readme.iter().map(|q| json!({"sql": q})).collect();
    let via_psycopg = psycopg(&python, &s, "admin", json!({"queries": queries})).await;
    for (i, q) in readme.iter().enumerate() {
        let (status, answer) = http_sql(&s, "secret-admin", q).await;
        assert_eq!(status, 200, "{q}: {answer}");
        let (ok, out, err) = psql(&psql_bin, &s, "admin", q).await;
        assert!(ok, "psql {q}: {err}");
        let (columns, rows) = psql_rows(&out);
        assert!(!rows.is_empty(), "{q}: no rows");
        assert_eq!(rows, http_rows(&answer, &columns), "psql, {q}");
        let (columns, rows) = psycopg_rows(&via_psycopg["results"][i]);
        assert_eq!(rows, http_rows(&answer, &columns), "psycopg, {q}");
    }

    // Freshness as a view, as HTTP answers state it: the catalog's data version, and a watermark
    // once the processors have published one.
    let (ok, out, err) = psql(
        &psql_bin,
        &s,
        "planner",
        "SELECT data_version, catalog_built_at, watermark IS NOT NULL AS watermarked FROM freshness",
    )
    .await;
    assert!(ok, "{err}");
    let (_, rows) = psql_rows(&out);
    let (_, snapshot) = http_sql(&s, "secret-planner", "SELECT data_version FROM freshness").await;
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0][0], norm(&snapshot[0]["data_version"]), "{out}");
    assert_eq!(rows[0][2], "true", "{out}");

    // A prepared statement with parameters (named, so psycopg parses it once and binds it twice):
    // the rows HTTP gives with the values written in.
    let (_, cells) = http_sql(
        &s,
        "secret-planner",
        "SELECT DISTINCT h3_cell_to_string(h3_cell_to_parent(h3_r8, 6)) AS cell FROM heartbeat \
         ORDER BY cell LIMIT 2",
    )
    .await;
    let cells: Vec<String> = cells
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cell"].as_str().unwrap().to_string())
        .collect();
    assert!(!cells.is_empty());
    let prepared = "SELECT device_key, count(*) AS n FROM heartbeat \
                    WHERE h3_cell_to_string(h3_cell_to_parent(h3_r8, 6)) = %s AND seq >= %s \
                    GROUP BY device_key ORDER BY device_key";
    let queries: Vec<Value> = cells
        .iter()
        .map(|c| json!({"sql": prepared, "params": [c, 0], "prepare": true}))
        .collect();
    let answer = psycopg(&python, &s, "planner", json!({"queries": queries})).await;
    for (i, cell) in cells.iter().enumerate() {
        let literal = prepared
            .replacen("%s", &format!("'{cell}'"), 1)
            .replacen("%s", "0", 1);
        let (status, http) = http_sql(&s, "secret-planner", &literal).await;
        assert_eq!(status, 200, "{http}");
        let (columns, rows) = psycopg_rows(&answer["results"][i]);
        assert!(!rows.is_empty(), "{cell}");
        assert_eq!(rows, http_rows(&http, &columns), "prepared, {cell}");
    }

    // Every panel of the Grafana dashboards (grafana/dashboards/) runs, with its macros expanded as
    // Grafana does, and has rows.
    let panels = dashboard_queries(now - 2 * 86_400_000, now + 3_600_000);
    assert!(panels.len() >= 6, "{panels:?}");
    let queries: Vec<Value> = panels.iter().map(|(_, q)| json!({"sql": q})).collect();
    let answer = psycopg(&python, &s, "admin", json!({"queries": queries})).await;
    for (i, (panel, q)) in panels.iter().enumerate() {
        let result = &answer["results"][i];
        assert!(result.get("error").is_none(), "{panel}: {q}: {result}");
        let rows = result["rows"].as_array().unwrap();
        assert!(!rows.is_empty(), "{panel}: no rows: {q}");
    }

    browsing(&psql_bin, &python, &s).await;

    // Who may log in, and what a planner may not do: each refusal with its SQLSTATE.
    let wrong = psycopg(
        &python,
        &s,
        "planner",
        json!({"password": "not-a-token", "queries": []}),
    )
    .await;
    assert!(login_refused(&wrong, "28P01"), "{wrong}");
    let operator = psycopg(&python, &s, "operator", json!({"queries": []})).await;
    assert!(login_refused(&operator, "42501"), "{operator}");
    let (ok, _, err) = psql(&psql_bin, &s, "nobody", "SELECT 1").await;
    assert!(!ok && err.contains("unknown token"), "{err}");
    // `anonymous` needs no password, and SQL is not public here.
    let (ok, _, err) = psql(&psql_bin, &s, "anonymous", "SELECT 1").await;
    assert!(!ok && err.contains("needs a bearer token"), "{err}");
    let refused = [
        ("SELECT count(*) FROM rejected", "42501"),
        ("SELECT * FROM road LIMIT 1", "42501"),
        ("CREATE TABLE t (a INT)", "42501"),
        ("INSERT INTO heartbeat SELECT * FROM heartbeat", "42501"),
        ("COPY heartbeat TO '/tmp/out.csv'", "42501"),
        ("SET datafusion.execution.batch_size = 1", "42501"),
        (
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            "42501",
        ),
        ("SELEC 1", "42601"),
    ];
    let queries: Vec<Value> = refused.iter().map(|(q, _)| json!({"sql": q})).collect();
    let answer = psycopg(&python, &s, "planner", json!({"queries": queries})).await;
    for (i, (q, want)) in refused.iter().enumerate() {
        assert_eq!(sqlstate(&answer["results"][i]), *want, "{q}: {answer}");
    }
    let (ok, _, err) = psql(&psql_bin, &s, "planner", "SELECT count(*) FROM road").await;
    assert!(!ok && err.contains("42501"), "{err}");

    // Cancels free the query's slot at once (one slot: the next query would wait for it): psycopg's
    // cancel request, and psql's Ctrl-C, which sends one.
    let answer = psycopg(
        &python,
        &s,
        "planner",
        json!({"autocommit": true, "queries": [{"sql": RUNAWAY, "cancel_after": 1.0}, {"sql": "SELECT 1 AS one"}]}),
    )
    .await;
    assert_eq!(sqlstate(&answer["results"][0]), "57014", "{answer}");
    assert_eq!(answer["results"][1]["rows"], json!([[1]]), "{answer}");
    assert!(slots_free(&s, Duration::from_secs(3)).await);
    // psql's Ctrl-C (SIGINT: a cancel request), and a psql killed outright (SIGKILL: the
    // connection hangs up mid-statement, which the door notices without reading it).
    for signal in ["INT", "KILL"] {
        let child = tokio::process::Command::new(&psql_bin)
            .args(["-X", "-v", "VERBOSITY=verbose", "-h", "127.0.0.1"])
            .args(["-p", &s.port.to_string(), "-U", "planner", "-d", "hexpulse"])
            .args(["-c", RUNAWAY])
            .env("PGPASSWORD", "secret-planner")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while running(&s).await == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "psql's query never started"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pid = child.id().unwrap().to_string();
        let killed = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(killed.success());
        let out = tokio::time::timeout(Duration::from_secs(5), child.wait_with_output())
            .await
            .expect("psql ends soon after the signal")
            .unwrap();
        if signal == "INT" {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("57014"), "{err}");
        }
        assert!(
            slots_free(&s, Duration::from_secs(3)).await,
            "SIG{signal}: the slot stays taken"
        );
    }
    stop.cancel();
}

/// The time limit, the per-token rate and a failed login's budget, on a small service of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_limit_and_the_rates_hold_on_the_postgres_door() {
    let test = "the_time_limit_and_the_rates_hold_on_the_postgres_door";
    let Some(python) = testenv::python_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().display().to_string();
    let mut cfg = QueryConfig::for_tests(&url);
    cfg.auth = auth();
    cfg.pg_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.query_timeout = Duration::from_secs(1);
    cfg.rate_per_client = RateLimit {
        per_second: 1,
        burst: 4,
    };
    let stop = CancellationToken::new();
    let s = start(cfg, &url, &stop).await;
    // The login spends one of the token's requests and each statement one; the burst is 4.
    let answer = psycopg(
        &python,
        &s,
        "planner",
        json!({"autocommit": true, "queries": [
            {"sql": "SELECT 1"}, {"sql": "SELECT 2"}, {"sql": "SELECT 3"}, {"sql": "SELECT 4"}
        ]}),
    )
    .await;
    let results = &answer["results"];
    for r in &results.as_array().unwrap()[..3] {
        assert!(r.get("rows").is_some(), "{answer}");
    }
    assert_eq!(sqlstate(&results[3]), "53000", "{answer}");
    assert!(
        results[3]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requests/s"),
        "{answer}"
    );
    // Another token has its own budget; the runaway stops at the time limit.
    let answer = psycopg(
        &python,
        &s,
        "admin",
        json!({"autocommit": true, "queries": [{"sql": RUNAWAY}]}),
    )
    .await;
    assert_eq!(sqlstate(&answer["results"][0]), "57014", "{answer}");
    let message = answer["results"][0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("longer than"), "{answer}");
    // Wrong tokens spend the address's budget: soon the guesses are refused for the rate.
    let mut seen = Vec::new();
    for _ in 0..15 {
        let r = psycopg(
            &python,
            &s,
            "planner",
            json!({"password": "guess", "queries": []}),
        )
        .await;
        let limited = login_refused(&r, "53000");
        seen.push(r);
        if limited {
            break;
        }
    }
    assert!(login_refused(&seen[0], "28P01"), "{seen:?}");
    assert!(login_refused(seen.last().unwrap(), "53000"), "{seen:?}");
    stop.cancel();
}
