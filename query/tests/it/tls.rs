//! TLS on the SQL doors (`[query] pg_tls`, `flight_tls`), with the clients users run and a
//! certificate made for the test by openssl: psql verifies the server (`sslmode=verify-full`) and
//! ADBC connects over `grpc+tls://`; on either door a client that does not speak TLS is refused.

use std::path::{Path, PathBuf};

use hexpulse_common::serve::TlsConfig;
use hexpulse_lake::Lake;
use hexpulse_query::{Query, QueryConfig};
use hexpulse_testkit::testenv;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::flight::adbc;
use crate::pg::{auth, psql_or_skip};

/// A self-signed certificate for `localhost` and 127.0.0.1, and its key, made by openssl.
fn certificate(dir: &Path) -> TlsConfig {
    let (cert_pem, key_pem) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key_pem)
        .arg("-out")
        .arg(&cert_pem)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    TlsConfig { cert_pem, key_pem }
}

/// psql as `planner` with `sslmode` (and the test's certificate as the root it trusts): whether
/// it succeeded, its output and its errors.
async fn psql(psql: &str, port: u16, sslmode: &str, root: &Path, sql: &str) -> (bool, String) {
    let conninfo = format!(
        "host=localhost port={port} dbname=hexpulse user=planner sslmode={sslmode} sslrootcert={}",
        root.display()
    );
    let out = tokio::process::Command::new(psql)
        .args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &conninfo,
            "-c",
            sql,
        ])
        .env("PGPASSWORD", "secret-planner")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run psql");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_doors_speak_tls_and_refuse_plain_text_where_it_is_configured() {
    let test = "the_sql_doors_speak_tls_and_refuse_plain_text_where_it_is_configured";
    let Some(psql_bin) = psql_or_skip(test) else {
        return;
    };
    let Some(python) = testenv::python_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tls = certificate(dir.path());
    let root: PathBuf = tls.cert_pem.clone();
    let lake_dir = dir.path().join("lake");
    std::fs::create_dir_all(&lake_dir).unwrap();
    let url = lake_dir.to_str().unwrap();
    let mut cfg = QueryConfig::for_tests(url);
    cfg.auth = auth();
    cfg.pg_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.pg_tls = Some(tls.clone());
    cfg.flight_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.flight_tls = Some(tls);
    let stop = CancellationToken::new();
    let q = Query::start(cfg, Lake::open(url).unwrap(), stop.clone())
        .await
        .unwrap();
    let pg_port = q.pg_addr.unwrap().port();
    let flight_port = q.flight_addr.unwrap().port();

    // PostgreSQL: psql checks the certificate and the name, and the statement runs.
    let (ok, out) = psql(
        &psql_bin,
        pg_port,
        "verify-full",
        &root,
        "SELECT 40 + 2 AS n",
    )
    .await;
    assert!(ok, "psql over TLS (verify-full): {out}");
    assert_eq!(out.trim(), "42", "{out}");
    // Plain text is refused before a password is asked for, with the reason and 28000.
    let (ok, out) = psql(&psql_bin, pg_port, "disable", &root, "SELECT 1").await;
    assert!(!ok, "a plain-text login must be refused: {out}");
    assert!(
        out.contains("requires TLS") && out.contains("28000"),
        "the refusal names TLS and 28000: {out}"
    );

    // Flight SQL: ADBC over grpc+tls, trusting the certificate.
    let query = json!([{"sql": "SELECT 40 + 2 AS n"}]);
    let report = adbc(
        &python,
        json!({"port": flight_port, "token": "secret-planner", "queries": query,
               "tls_root": root}),
    )
    .await;
    assert_eq!(
        report["results"][0]["rows"], 1,
        "ADBC over grpc+tls: {report}"
    );
    // Plain gRPC to the TLS door does not get an answer.
    let report = adbc(
        &python,
        json!({"port": flight_port, "token": "secret-planner", "queries": query,
               "tls_root": root, "scheme": "grpc"}),
    )
    .await;
    assert!(
        report.get("connect_error").is_some() || report["results"][0].get("error").is_some(),
        "plain gRPC must fail against the TLS door: {report}"
    );
    stop.cancel();
    q.wait().await;
}
