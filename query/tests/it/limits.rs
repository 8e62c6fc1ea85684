//! Limits of the query service: a rate per caller (token, or IP without one), slow clients cut off,
//! and overload (many heavy queries at once) refused with 503/413 while health checks keep answering
//! and memory stays near the configured pool.

use std::time::{Duration, Instant};

use hexpulse_common::ratelimit::RateLimit;
use hexpulse_common::testenv::{self, SlowClient};
use hexpulse_lake::Lake;
use hexpulse_query::config::{AuthConfig, TokenConfig};
use hexpulse_query::{Query, QueryConfig};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn sha(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

async fn start(cfg: QueryConfig, url: &str, stop: &CancellationToken) -> String {
    let q = Query::start(cfg, Lake::open(url).unwrap(), stop.clone())
        .await
        .unwrap();
    format!("http://{}", q.addr)
}

async fn get(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> (u16, Value, Option<u64>) {
    let mut rb = client.get(url);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    (status, r.json().await.unwrap_or(Value::Null), retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_per_token_and_per_ip() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().display().to_string();
    let mut cfg = QueryConfig::for_tests(&url);
    cfg.rate_per_client = RateLimit {
        per_second: 1,
        burst: 3,
    };
    cfg.trust_forwarded_for = true;
    cfg.auth = AuthConfig {
        public: vec!["meta".into()],
        ..AuthConfig::default()
    };
    cfg.auth
        .roles
        .insert("oracle".into(), vec!["epochs".into(), "meta".into()]);
    for name in ["a", "b"] {
        cfg.auth.tokens.push(TokenConfig {
            name: name.into(),
            role: "oracle".into(),
            sha256: sha(&format!("secret-{name}")),
        });
    }
    let stop = CancellationToken::new();
    let base = start(cfg, &url, &stop).await;
    let client = reqwest::Client::new();
    let epochs = format!("{base}/v1/epochs");
    for i in 0..3 {
        let (s, body, _) = get(&client, &epochs, Some("secret-a")).await;
        assert_eq!(s, 200, "request {i} of a: {body}");
    }
    let (s, body, retry) = get(&client, &epochs, Some("secret-a")).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    assert!(retry.is_some_and(|r| (1..=2).contains(&r)), "{retry:?}");
    // Another token, and callers without one (by IP), have budgets of their own.
    let (s, _, _) = get(&client, &epochs, Some("secret-b")).await;
    assert_eq!(s, 200);
    let openapi = format!("{base}/openapi.json");
    for _ in 0..3 {
        assert_eq!(get(&client, &openapi, None).await.0, 200);
    }
    assert_eq!(get(&client, &openapi, None).await.0, 429);
    // Behind a proxy (trust_forwarded_for), the address the proxy appended tells callers apart.
    for (i, want) in [200, 200, 200, 429].into_iter().enumerate() {
        let r = client
            .get(&openapi)
            .header("x-forwarded-for", "203.0.113.7, 198.51.100.2")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "forwarded request {i}");
    }
    // Unknown tokens are refused before they could use anyone's budget; health is never limited.
    assert_eq!(get(&client, &epochs, Some("nope")).await.0, 401);
    for _ in 0..10 {
        assert_eq!(get(&client, &format!("{base}/healthz"), None).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&client, &epochs, Some("secret-a")).await.0, 200);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().display().to_string();
    let mut cfg = QueryConfig::for_tests(&url);
    cfg.request_timeout = Duration::from_secs(1);
    cfg.query_timeout = Duration::from_secs(1);
    let stop = CancellationToken::new();
    let base = start(cfg, &url, &stop).await;
    let addr = base.trim_start_matches("http://").parse().unwrap();
    let (every, give_up) = (Duration::from_millis(200), Duration::from_secs(8));
    match testenv::slow_client(
        addr,
        "GET /v1/epochs HTTP/1.1\r\nHost: x\r\n",
        "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        every,
        give_up,
    )
    .await
    {
        SlowClient::Closed { after, .. } => {
            assert!(after < Duration::from_secs(4), "closed after {after:?}")
        }
        SlowClient::StillOpen => panic!("a client sending its headers slowly was not cut off"),
    }
    match testenv::slow_client(
        addr,
        "POST /v1/sql HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\nSELECT ",
        " ",
        every,
        give_up,
    )
    .await
    {
        SlowClient::Closed { after, answer } => {
            assert!(after < Duration::from_secs(4), "closed after {after:?}");
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        }
        SlowClient::StillOpen => panic!("a client sending its body slowly was not cut off"),
    }
    let (s, _, _) = get(&reqwest::Client::new(), &format!("{base}/healthz"), None).await;
    assert_eq!(s, 200);
    stop.cancel();
}

async fn post_sql(client: &reqwest::Client, base: &str, q: &str) -> (u16, String) {
    let r = client
        .post(format!("{base}/v1/sql"))
        .body(q.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, body["error"].as_str().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_queries_stay_in_the_memory_pool() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().display().to_string();
    let mut cfg = QueryConfig::for_tests(&url);
    let pool = 16usize << 20;
    cfg.memory_limit_bytes = pool;
    cfg.query_timeout = Duration::from_secs(30);
    let stop = CancellationToken::new();
    let base = start(cfg, &url, &stop).await;
    let client = reqwest::Client::new();
    let before = testenv::peak_rss();
    // Grouping 2.5 million distinct keys needs far more than the pool: the aggregate spills to
    // disk and finishes, or (when a partition cannot spill in time) is refused; never grown.
    let grouping = "SELECT v % 2500000 AS k, count(*) AS n FROM generate_series(1, 5000000) AS t(v) \
                    GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1";
    let answer = post_sql(&client, &base, grouping).await;
    assert!(
        matches!(
            (answer.0, answer.1.as_str()),
            (200, "") | (413, "memory_limit")
        ),
        "{answer:?}"
    );
    eprintln!(
        "grouping: {answer:?}, peak RSS +{} MiB",
        (testenv::peak_rss() - before) >> 20
    );
    // A hash join's build side cannot spill: refused at the pool with 413, not grown.
    let join = "SELECT count(*) FROM generate_series(1, 20000000) AS a(x) \
                JOIN generate_series(1, 20000000) AS b(y) ON x = y";
    assert_eq!(
        post_sql(&client, &base, join).await,
        (413, "memory_limit".to_string())
    );
    // Without the pool the join's build side alone would take over 400 MiB; with it, the process
    // grows by the pool plus fixed costs (threads, buffers: about 75 MiB measured).
    let grew = testenv::peak_rss().saturating_sub(before);
    assert!(
        grew < 160 << 20,
        "peak RSS grew by {} MiB with a {} MiB pool",
        grew >> 20,
        pool >> 20
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_queries_get_503_and_health_answers() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().display().to_string();
    let mut cfg = QueryConfig::for_tests(&url);
    cfg.max_concurrent_queries = 2;
    cfg.query_threads = 1;
    cfg.query_timeout = Duration::from_secs(2);
    let stop = CancellationToken::new();
    let base = start(cfg, &url, &stop).await;
    let client = reqwest::Client::new();

    // Twelve long queries at once: two run until the time limit, the rest wait as long and get 503.
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            post_sql(
                &client,
                &base,
                "SELECT sum(v * v % 7) FROM generate_series(1, 3000000000) AS t(v)",
            )
            .await
        }));
    }
    // Health answers quickly throughout (plans run on their own threads).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let t = Instant::now();
        let (s, _, _) = get(&client, &format!("{base}/healthz"), None).await;
        assert_eq!(s, 200);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "health took {:?} under load",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut outcomes = std::collections::BTreeMap::<(u16, String), usize>::new();
    for t in tasks {
        *outcomes.entry(t.await.unwrap()).or_default() += 1;
    }
    // A waiter that gets a slot just before its wait ends runs to the time limit too.
    let busy = outcomes.get(&(503, "busy".into())).copied().unwrap_or(0);
    let timed_out = outcomes
        .get(&(408, "time_limit".into()))
        .copied()
        .unwrap_or(0);
    assert_eq!(
        busy + timed_out,
        12,
        "only busy or time_limit: {outcomes:?}"
    );
    assert!(busy >= 6, "{outcomes:?}");
    stop.cancel();
}
