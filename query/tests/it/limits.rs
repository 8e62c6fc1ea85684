//! Limits of the query service: a rate per caller (token, or IP without one), slow clients cut off,
//! and overload (many heavy queries at once) refused with 503/413 while health checks keep answering
//! and memory stays near the configured pool.

use std::time::{Duration, Instant};

use hexpulse_common::ratelimit::RateLimit;
use hexpulse_lake::Lake;
use hexpulse_query::config::AuthConfig;
use hexpulse_query::{Query, QueryConfig};
use hexpulse_testkit::testenv::{self, SlowClient};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::pg::token;

async fn start(cfg: QueryConfig, url: &str, stop: &CancellationToken) -> String {
    let q = Query::start(cfg, Lake::open(url).unwrap(), stop.clone())
        .await
        .unwrap();
    format!("http://{}", q.addr)
}

/// A query service over an empty lake, its config changed by `tweak`: the lake's directory (keep
/// it), the base URL and the token that stops it.
async fn service(
    tweak: impl FnOnce(&mut QueryConfig),
) -> (tempfile::TempDir, String, CancellationToken) {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().display().to_string();
    let mut cfg = QueryConfig::for_tests(&url);
    tweak(&mut cfg);
    let stop = CancellationToken::new();
    let base = start(cfg, &url, &stop).await;
    (dir, base, stop)
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
    cfg.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    cfg.auth = AuthConfig {
        public: vec!["meta".into()],
        ..AuthConfig::default()
    };
    cfg.auth
        .roles
        .insert("oracle".into(), vec!["epochs".into(), "meta".into()]);
    for name in ["a", "b"] {
        cfg.auth
            .tokens
            .push(token(name, "oracle", &format!("secret-{name}")));
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
        (s, body["error"]["code"].as_str()),
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
    // Behind a trusted proxy (the test's loopback peer), the address it appended tells callers apart.
    for (i, want) in [200, 200, 200, 429].into_iter().enumerate() {
        let r = client
            .get(&openapi)
            .header("x-forwarded-for", "203.0.113.7, 198.51.100.2")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "forwarded request {i}");
    }
    // A failed authentication spends its address's budget (the loopback's, spent above), never a
    // token's; health is never limited.
    assert_eq!(get(&client, &epochs, Some("nope")).await.0, 429);
    for _ in 0..10 {
        assert_eq!(get(&client, &format!("{base}/healthz"), None).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&client, &epochs, Some("secret-a")).await.0, 200);
    // Guessing tokens from one address: 401 while its budget lasts, then 429 (#20, low: failed
    // authentication was never limited). The guesses spend no token's budget.
    let mut guesses = Vec::new();
    for i in 0..5 {
        guesses.push(get(&client, &epochs, Some(&format!("guess-{i}"))).await.0);
    }
    assert!(
        guesses[0] == 401 && guesses[1..].iter().all(|s| *s == 429),
        "{guesses:?}"
    );
    assert_eq!(get(&client, &epochs, Some("secret-b")).await.0, 200);
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
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
    )
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

async fn post_sql_accept(
    client: &reqwest::Client,
    base: &str,
    q: &str,
    accept: &str,
) -> (u16, String, String) {
    let r = client
        .post(format!("{base}/v1/sql"))
        .header("accept", accept)
        .body(q.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
        body["error"]["message"].as_str().unwrap_or("").to_string(),
    )
}

/// #20.1: a query that steers an allocation (a function's result, a type's width, the answer's
/// size) is refused with 413 or 400, and the service goes on answering. Before the bounds, the
/// first request aborted the process, and with it this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sql_request_never_takes_the_service_down() {
    let (_dir, base, stop) = service(|cfg| {
        cfg.max_rows = 1_000_000;
        cfg.max_answer_bytes = 4 << 20;
    })
    .await;
    let client = reqwest::Client::new();
    let mut chain = String::from("WITH t0 AS (SELECT repeat('x', 1000) AS s)");
    for i in 1..40 {
        chain.push_str(&format!(", t{i} AS (SELECT s || s AS s FROM t{})", i - 1));
    }
    chain.push_str(" SELECT length(s) FROM t39");
    let cases: Vec<(String, u16, &str)> = vec![
        (
            "SELECT length(repeat(arrow_cast('x','LargeUtf8'), 1000000000000))".into(),
            413,
            "memory_limit",
        ),
        (
            "SELECT max(length(s)) FROM (SELECT repeat(CAST(v AS VARCHAR), 100000000) AS s \
             FROM generate_series(1, 3) AS t(v))"
                .into(),
            413,
            "memory_limit",
        ),
        (
            "SELECT length(lpad('x', 2000000000, 'yz'))".into(),
            413,
            "memory_limit",
        ),
        (
            "SELECT cardinality(array_repeat(1, 4000000000))".into(),
            413,
            "memory_limit",
        ),
        (
            "SELECT cardinality(range(1, 100000000000))".into(),
            413,
            "memory_limit",
        ),
        (
            "SELECT cardinality(h3_grid_disk(h3_latlng_to_cell(v * 0.001, 0, 12), 64)) \
             FROM generate_series(1, 8000) AS t(v)"
                .into(),
            413,
            "memory_limit",
        ),
        (chain, 413, "memory_limit"),
        (
            "SELECT arrow_cast(NULL, 'FixedSizeList(1000000000, Int64)')".into(),
            400,
            "sql_plan",
        ),
        (
            "SELECT CAST(NULL AS BIGINT[2000000000])".into(),
            400,
            "sql_plan",
        ),
        (
            "WITH RECURSIVE t(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM t) \
             SELECT length(s) FROM t"
                .into(),
            400,
            "not_supported",
        ),
        // 100,000 rows of 100 bytes: over the answer's 4 MiB, in batches and encoded.
        (
            "SELECT repeat('x', 100) AS s FROM generate_series(1, 100000)".into(),
            413,
            "answer_limit",
        ),
    ];
    for (sql, status, code) in &cases {
        let (s, c, message) = post_sql_accept(&client, &base, sql, "application/json").await;
        assert_eq!((s, c.as_str()), (*status, *code), "{sql}: {message}");
        let (s, _, _) = get(&client, &format!("{base}/healthz"), None).await;
        assert_eq!(s, 200, "after {sql}");
    }
    // Encoding can outgrow the batches (JSON quotes, CSV): the encoded body is bounded too.
    let wide = "SELECT 1.0 / v AS x, 2.0 / v AS y FROM generate_series(1, 200000) AS t(v)";
    let (s, c, message) = post_sql_accept(&client, &base, wide, "application/json").await;
    assert_eq!((s, c.as_str()), (413, "answer_limit"), "{message}");
    // Honest queries still work, strings included.
    let (s, c, message) = post_sql_accept(
        &client,
        &base,
        "SELECT repeat('ab', 1000) || 'c' AS s, lpad('7', 3, '0') AS p, \
         cardinality(range(1, 1000)) AS n",
        "application/json",
    )
    .await;
    assert_eq!((s, c.as_str()), (200, ""), "{message}");
    stop.cancel();
}

/// #20.5: a client that goes away takes its plan with it: the slot is the plan's, and the plan is
/// aborted when the request ends. Before, the plans of cancelled requests kept the query threads
/// busy until their time limit while their slots were already free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_requests_cancel_their_plans() {
    let (_dir, base, stop) = service(|cfg| {
        cfg.max_concurrent_queries = 4;
        cfg.query_threads = 1;
        cfg.query_timeout = Duration::from_secs(120);
        cfg.request_timeout = Duration::from_secs(120);
    })
    .await;
    let heavy = "SELECT sum(v * v % 7) FROM generate_series(1, 100000000000) AS t(v)";
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    for _ in 0..20 {
        let r = quick
            .post(format!("{base}/v1/sql"))
            .body(heavy)
            .send()
            .await;
        assert!(r.is_err(), "the heavy query answered within 300 ms");
    }
    let client = reqwest::Client::new();
    let running = || async {
        let (s, body, _) = get(&client, &format!("{base}/readyz"), None).await;
        assert_eq!(s, 200);
        body["running_queries"].as_u64().unwrap()
    };
    let started = Instant::now();
    let mut now = running().await;
    while now > 0 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = running().await;
    }
    assert_eq!(now, 0, "plans of requests that went away still run");
    let (s, c) = post_sql(
        &client,
        &base,
        "SELECT count(*) FROM generate_series(1, 1000)",
    )
    .await;
    assert_eq!((s, c.as_str()), (200, ""));
    stop.cancel();
}

/// #20.5: the time limit holds for a plan that never waits on I/O.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_limit_stops_cpu_bound_plans() {
    let (_dir, base, stop) = service(|cfg| {
        cfg.query_threads = 1;
        cfg.query_timeout = Duration::from_secs(1);
    })
    .await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    for sql in [
        "SELECT sum(v * v % 7) FROM generate_series(1, 100000000000) AS t(v)",
        "SELECT count(*) FROM generate_series(1, 100000) AS a(x), generate_series(1, 100000) AS b(y) \
         WHERE x * y % 3 = 1",
        "SELECT max(length(h3_cell_to_boundary(h3_latlng_to_cell(v * 0.00001, 0, 12)))) \
         FROM generate_series(1, 100000000000) AS t(v)",
    ] {
        let t = Instant::now();
        let (s, c) = post_sql(&client, &base, sql).await;
        assert_eq!((s, c.as_str()), (408, "time_limit"), "{sql}");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{sql} took {:?}",
            t.elapsed()
        );
    }
    eprintln!("three time limits in {:?}", started.elapsed());
    stop.cancel();
}

/// #20.12: spilling is bounded by `max_spill_bytes` (DataFusion's default is 100 GB, while the
/// query pod's /tmp holds 1 GiB): a sort that needs more is refused with 413, and one that fits
/// the spill space finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spilling_stops_at_max_spill_bytes() {
    let sort = "SELECT max(r) FROM (SELECT row_number() OVER (ORDER BY v % 1000, v) AS r \
                FROM generate_series(1, 3000000) AS t(v))";
    for (spill, want) in [(1u64 << 20, (413, "memory_limit")), (1 << 30, (200, ""))] {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().display().to_string();
        let mut cfg = QueryConfig::for_tests(&url);
        cfg.memory_limit_bytes = 16 << 20;
        cfg.max_spill_bytes = spill;
        cfg.query_timeout = Duration::from_secs(60);
        let stop = CancellationToken::new();
        let base = start(cfg, &url, &stop).await;
        let (s, c, message) =
            post_sql_accept(&reqwest::Client::new(), &base, sort, "application/json").await;
        assert_eq!((s, c.as_str()), want, "max_spill_bytes {spill}: {message}");
        stop.cancel();
    }
}

/// #20.4: silent sockets are closed after the header timeout, and a listener holds at most
/// `max_connections`, so that they cannot take the process's file descriptors. Before, a socket
/// that sent nothing stayed open forever and every one of them held a descriptor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_capped_and_closed() {
    use tokio::io::AsyncReadExt;
    let (_dir, base, stop) = service(|cfg| {
        cfg.request_timeout = Duration::from_secs(1);
        cfg.query_timeout = Duration::from_secs(1);
        cfg.max_connections = 50;
    })
    .await;
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = fds();
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // One more: a byte of a request, then nothing.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stalled, b"P")
        .await
        .unwrap();
    silent.push(stalled);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // This process holds both ends: 201 client sockets, and at most 50 accepted ones.
    let held = fds() - before;
    assert!(
        held <= 201 + 50 + 5,
        "{held} descriptors for 201 silent sockets"
    );
    // Every silent socket is closed by the server: at once past the cap, the rest after the
    // header timeout.
    let started = Instant::now();
    for (i, s) in silent.iter_mut().enumerate() {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("silent socket {i} got {n} bytes"),
            Err(_) => panic!("silent socket {i} still open after {:?}", started.elapsed()),
        }
    }
    drop(silent);
    let (s, _, _) = get(&reqwest::Client::new(), &format!("{base}/healthz"), None).await;
    assert_eq!(s, 200);
    stop.cancel();
}

/// #20.10: a tile layer is authorised as the router decodes it: a percent-encoded `road` is the
/// road layer, not a coverage tile. Before, `/v1/tiles/%72oad/...` passed as coverage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_tile_layers_are_authorised_as_their_layer() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().display().to_string();
    let mut cfg = QueryConfig::for_tests(&url);
    cfg.auth = AuthConfig {
        public: vec!["coverage".into()],
        ..AuthConfig::default()
    };
    cfg.auth
        .roles
        .insert("planner".into(), vec!["coverage".into(), "sensors".into()]);
    cfg.auth.tokens.push(token("p", "planner", "secret-p"));
    let stop = CancellationToken::new();
    let base = start(cfg, &url, &stop).await;
    let client = reqwest::Client::new();
    for layer in ["road", "%72oad", "%72%6F%61%64", "r%6fad"] {
        let tile = format!("{base}/v1/tiles/{layer}/10/549/335.mvt");
        let anonymous = client.get(&tile).send().await.unwrap().status().as_u16();
        assert_eq!(anonymous, 401, "{layer} without a token");
        let planner = client
            .get(&tile)
            .bearer_auth("secret-p")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(planner, 403, "{layer} for a role without road");
    }
    let coverage = client
        .get(format!("{base}/v1/tiles/%63overage/10/549/335.mvt"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert!(coverage < 300, "a public coverage tile: {coverage}");
    stop.cancel();
}

/// #20 (low): times and epoch ids at the ends of i64 are refused with 400 or 404, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_times_and_epoch_ids_are_refused() {
    let (_dir, base, stop) = service(|_| {}).await;
    let client = reqwest::Client::new();
    let (max, min) = (i64::MAX, i64::MIN);
    for path in [
        format!("/v1/coverage?to={max}"),
        format!("/v1/coverage?to={min}"),
        format!("/v1/coverage?from={min}&to=1000"),
        format!("/v1/deadzones?to={max}"),
        format!("/v1/sensors/series?from=0&to={max}&metric=pm25"),
        format!("/v1/road/hexes?to={max}"),
        "/v1/coverage?to=99999-01-01T00:00:00Z".to_string(),
        format!("/v1/epochs/{max}/manifest"),
        format!("/v1/epochs/{min}/devices"),
        format!("/v1/epochs/{max}/devices/00/hexes"),
        format!("/v1/epochs/{min}/proof/00"),
    ] {
        let r = client.get(format!("{base}{path}")).send().await;
        let status = r.map(|r| r.status().as_u16()).unwrap_or(0);
        assert!(
            status == 400 || status == 404,
            "{path}: {status} (0: the connection broke)"
        );
    }
    let (s, _, _) = get(&client, &format!("{base}/healthz"), None).await;
    assert_eq!(s, 200);
    stop.cancel();
}
