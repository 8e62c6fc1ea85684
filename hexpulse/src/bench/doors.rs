//! `hexpulse bench doors`: one large answer (`SELECT * FROM sensor LIMIT rows`) fetched through
//! each SQL door of the query service, against DataFusion executing the same statement in-process
//! on the same catalog (issue #23).
//!
//! A lake of simulated readings is written by the processors' partition workers, as for `bench
//! query`. The query service runs in this process with its HTTP, Flight SQL and PostgreSQL doors on
//! loopback; the clients are arrow-flight's Flight SQL client (Arrow batches as they come), ADBC's
//! Flight SQL driver from Python (`flight-sql-adbc`, when the venv has it: the answer fetched as
//! one Arrow table, timed by the script from the statement's execution, so neither the
//! interpreter's start nor the connection counts), psql (when installed: the PostgreSQL door's text
//! rows, read to the end) and HTTP with each answer format (JSON, CSV, Arrow IPC; the HTTP door
//! builds the whole answer before sending it). Each door runs `runs` times in turn with the
//! in-process baseline, one after the other in the same run, and its figure is the median; every
//! answer's row count is checked.
//!
//! `ipc-over-tcp` is measured the same way but is no door: the in-process plan's batches go as
//! Arrow IPC through one bare loopback TCP socket. Its ratio is a ceiling for every door over TCP on
//! the machine, so a door's figure can be read against what the transport alone allows.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::StreamExt;
use hexpulse_common::time::now_ms;
use hexpulse_lake::{HOUR_MS, Lake};
use hexpulse_query::datafusion::arrow::array::RecordBatch;
use hexpulse_query::datafusion::arrow::ipc::reader::StreamReader;
use hexpulse_query::datafusion::arrow::ipc::writer::StreamWriter;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::query::{build_lake, percentile};

/// Settings of one run.
#[derive(Debug, Clone, clap::Args)]
pub struct DoorsArgs {
    /// Rows of `sensor` in the answer.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: usize,
    /// Timed fetches through each door (after one warm-up of each).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// psql for the PostgreSQL door (Debian's postgresql-client); without it that door is not
    /// measured.
    #[arg(long, env = "HEXPULSE_PSQL", default_value = "psql")]
    pub psql: PathBuf,
    /// The Python with ADBC's Flight SQL driver (scripts/requirements.txt; `make bench` passes the
    /// cached venv's) for flight-sql-adbc; without the driver that door is not measured.
    #[arg(long, env = "HEXPULSE_PYTHON", default_value = "python3")]
    pub python: PathBuf,
    /// Measure only these doors (comma-separated: flight-sql, flight-sql-adbc, postgres,
    /// http-json, http-csv, http-arrow, ipc-over-tcp: the ceiling of any door over TCP);
    /// in-process DataFusion always runs as the baseline.
    #[arg(long, value_delimiter = ',')]
    pub doors: Vec<String>,
    /// Write the JSON report here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Every door the bench can measure, after the in-process baseline: (door, client). The last is
/// not a door but the ceiling of every door over TCP ([`ipc_over_tcp`]).
const DOORS: [(&str, &str); 7] = [
    (
        "flight-sql",
        "arrow-flight FlightSqlServiceClient (tonic, adaptive HTTP/2 window, 1 MiB frames)",
    ),
    (
        "flight-sql-adbc",
        "ADBC's Flight SQL driver (grpc-go) from Python, fetch_arrow_table, timed by the script",
    ),
    ("postgres", "psql -A -t (text rows)"),
    ("http-json", "reqwest, POST /v1/sql?format=json"),
    ("http-csv", "reqwest, POST /v1/sql?format=csv"),
    ("http-arrow", "reqwest, POST /v1/sql?format=arrow"),
    (
        "ipc-over-tcp",
        "no door: the in-process plan's batches as Arrow IPC through one loopback TCP socket, read and discarded (no gRPC, HTTP/2 or decoding): a ceiling for any door over TCP on these cores",
    ),
];

#[derive(Debug, Serialize)]
struct DoorRun {
    door: String,
    client: String,
    /// Wall time of each timed fetch, seconds.
    seconds: Vec<f64>,
    rows_per_s: f64,
    /// The answer's size as the client received it: the HTTP body, or psql's output; none for
    /// Flight SQL, whose client gives decoded batches (the same Arrow IPC as `http-arrow`'s body).
    bytes: Option<u64>,
    /// rows_per_s over the in-process rate of the same run.
    ratio_to_in_process: f64,
}

#[derive(Debug, Serialize)]
struct DoorsReport {
    rows: usize,
    runs: usize,
    sql: String,
    lake_sensor_rows: usize,
    in_process_rows_per_s: f64,
    in_process_seconds: Vec<f64>,
    doors: Vec<DoorRun>,
    /// The Flight SQL door's ratio to in-process (target >= 0.8); null when that door did not run.
    flight_ratio: Option<f64>,
}

/// A fetch through one door: the rows, the bytes it received where the client counts them, and
/// the seconds it took where the client times itself (otherwise the caller's clock counts).
type Fetched = (usize, Option<u64>, Option<f64>);

/// `sql` planned and started in-process on the service's catalog.
async fn in_process_stream(
    q: &hexpulse_query::Query,
    sql: &str,
) -> anyhow::Result<hexpulse_query::datafusion::execution::SendableRecordBatchStream> {
    let (ctx, _) = q.gate.catalog.context();
    Ok(ctx.sql(sql).await?.execute_stream().await?)
}

async fn in_process(q: &hexpulse_query::Query, sql: &str) -> anyhow::Result<Fetched> {
    let mut stream = in_process_stream(q, sql).await?;
    let mut rows = 0usize;
    while let Some(b) = stream.next().await {
        rows += b?.num_rows();
    }
    Ok((rows, None, None))
}

/// Not a door: the in-process plan's batches written as an Arrow IPC stream into one loopback TCP
/// socket by one thread and read and thrown away by another. Any door over TCP moves at least these
/// bytes through the kernel on the same cores as the plan, and does more (framing, copies into
/// messages, the client's decoding), so this figure bounds every door's ratio to in-process.
async fn ipc_over_tcp(q: &hexpulse_query::Query, sql: &str) -> anyhow::Result<Fetched> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut socket, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match socket.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let mut stream = in_process_stream(q, sql).await?;
    let schema = stream.schema();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<RecordBatch>(4);
    let writer = std::thread::spawn(move || -> anyhow::Result<usize> {
        let socket = std::net::TcpStream::connect(addr)?;
        let out = std::io::BufWriter::with_capacity(1 << 20, socket);
        let mut w = StreamWriter::try_new(out, &schema)?;
        let mut rows = 0;
        while let Some(b) = rx.blocking_recv() {
            rows += b.num_rows();
            w.write(&b)?;
        }
        w.finish()?;
        w.into_inner()?.flush()?;
        Ok(rows)
    });
    while let Some(b) = stream.next().await {
        if tx.send(b?).await.is_err() {
            break;
        }
    }
    drop(tx);
    let joined = tokio::task::spawn_blocking(move || (writer.join(), reader.join())).await?;
    let panicked = |_| anyhow::anyhow!("a thread of the TCP ceiling panicked");
    let rows = joined.0.map_err(panicked)??;
    let bytes = joined.1.map_err(panicked)??;
    Ok((rows, Some(bytes), None))
}

async fn flight(addr: std::net::SocketAddr, sql: &str) -> anyhow::Result<Fetched> {
    // HTTP/2 flow control sized to the connection, as grpc-go (ADBC's driver) and grpc-java size it:
    // with h2's fixed 64 KiB window the client, not the door, would set the pace. Frames of up to
    // 1 MiB instead of h2's 16 KiB: a 1M-row answer is about 180 MB of Arrow IPC, and 16 KiB frames
    // cost a wake-up each (measured 2026-12-05: 2.17M against 2.99M rows/s, medians of 7).
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .http2_adaptive_window(true)
        .max_frame_size(1 << 20)
        .connect()
        .await?;
    let mut client = FlightSqlServiceClient::new(channel);
    let info = client.execute(sql.to_string(), None).await?;
    let mut rows = 0usize;
    for endpoint in info.endpoint {
        let ticket = endpoint
            .ticket
            .context("a Flight endpoint without a ticket")?;
        let mut stream = client.do_get(ticket).await?;
        while let Some(b) = stream.next().await {
            rows += b?.num_rows();
        }
    }
    Ok((rows, None, None))
}

/// The Flight SQL door through ADBC's driver (scripts/flight_client.py), which times the fetch.
async fn adbc(
    python: &std::path::Path,
    addr: std::net::SocketAddr,
    sql: &str,
) -> anyhow::Result<Fetched> {
    let request = serde_json::json!({
        "port": addr.port(),
        "queries": [{"sql": sql, "timed": true}],
    });
    let report = super::python_json(python, "flight_client.py", &request).await?;
    if let Some(e) = report["connect_error"].as_str() {
        bail!("ADBC could not connect: {e}");
    }
    let result = &report["results"][0];
    if let Some(e) = result["error"].as_str() {
        bail!("ADBC: {e}");
    }
    let rows = result["rows"].as_u64().context("ADBC: no row count")? as usize;
    let seconds = result["seconds"].as_f64().context("ADBC: no time")?;
    Ok((rows, None, Some(seconds)))
}

async fn psql(psql: &PathBuf, addr: std::net::SocketAddr, sql: &str) -> anyhow::Result<Fetched> {
    let out = tokio::process::Command::new(psql)
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args([
            "-U",
            hexpulse_query::pg::ANONYMOUS,
            "-d",
            "hexpulse",
            "-c",
            sql,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", psql.display()))?;
    ensure!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = out.stdout.iter().filter(|&&b| b == b'\n').count();
    Ok((rows, Some(out.stdout.len() as u64), None))
}

async fn http(
    client: &reqwest::Client,
    base: &str,
    format: &str,
    sql: &str,
) -> anyhow::Result<Fetched> {
    let r = client
        .post(format!("{base}/v1/sql?format={format}"))
        .body(sql.to_string())
        .send()
        .await?;
    ensure!(r.status() == 200, "HTTP {format}: {}", r.status());
    let body = r.bytes().await?;
    let bytes = Some(body.len() as u64);
    // Counted after the clock stops (the caller times the fetch alone): parsing is the client's.
    let rows = match format {
        "json" => serde_json::from_slice::<Vec<serde_json::Value>>(&body)?.len(),
        "csv" => body
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            .saturating_sub(1),
        _ => StreamReader::try_new(std::io::Cursor::new(body), None)?
            .map(|b| b.map(|b| b.num_rows()))
            .sum::<Result<usize, _>>()?,
    };
    Ok((rows, bytes, None))
}

/// Whether `door`'s outside client runs (`program args` succeeds); if not, says so (`why`) and that
/// the door is not measured.
async fn client_runs(door: &str, program: &std::path::Path, args: &[&str], why: &str) -> bool {
    let runs = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    if !runs {
        eprintln!("[bench] {why}: the {door} door is not measured");
    }
    runs
}

pub(crate) async fn doors(args: DoorsArgs) -> anyhow::Result<()> {
    if args.runs < 1 {
        bail!("--runs must be at least 1");
    }
    if let Some(d) = args
        .doors
        .iter()
        .find(|d| !DOORS.iter().any(|(n, _)| n == d))
    {
        bail!(
            "--doors: no door {d:?}; the doors are {}",
            DOORS.map(|(n, _)| n).join(", ")
        );
    }
    let dir = std::env::temp_dir().join(format!("hexpulse-bench-doors-{}", std::process::id()));
    let lake_dir = dir.join("lake");
    std::fs::create_dir_all(&lake_dir)?;
    let url = lake_dir.to_str().context("lake path")?.to_string();
    let lake = Lake::open(&url)?;
    // A sensor reading gives a row per metric (three to five): a third of the readings are sensor
    // readings, so `rows` readings give more than `rows` sensor rows.
    let readings = args.rows.max(1000);
    let end_ms = (now_ms() / HOUR_MS - 2) * HOUR_MS;
    let t = Instant::now();
    eprintln!(
        "[bench] writing {readings} simulated readings to {}",
        lake_dir.display()
    );
    build_lake(&lake, super::query::FLEET, readings, end_ms, 24 * HOUR_MS).await?;
    eprintln!("[bench] lake written in {:.0} s", t.elapsed().as_secs_f64());

    let mut qcfg = hexpulse_query::QueryConfig::for_tests(&url);
    qcfg.max_rows = args.rows;
    qcfg.max_answer_bytes = 8 << 30;
    qcfg.query_timeout = Duration::from_secs(600);
    qcfg.request_timeout = Duration::from_secs(600);
    qcfg.memory_limit_bytes = 8 << 30;
    qcfg.query_threads = 0;
    qcfg.refresh_interval = Duration::from_secs(3600);
    qcfg.pg_listen = Some("127.0.0.1:0".parse()?);
    qcfg.flight_listen = Some("127.0.0.1:0".parse()?);
    let stop = CancellationToken::new();
    let q = hexpulse_query::Query::start(qcfg, lake, stop.clone()).await?;
    let base = format!("http://{}", q.addr);
    let (pg_addr, flight_addr) = (
        q.pg_addr.context("pg door")?,
        q.flight_addr.context("flight door")?,
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let sql = format!("SELECT * FROM sensor LIMIT {}", args.rows);
    let lake_sensor_rows = q
        .gate
        .catalog
        .context()
        .0
        .table("sensor")
        .await?
        .count()
        .await?;
    if lake_sensor_rows < args.rows {
        bail!(
            "the lake has {lake_sensor_rows} sensor rows, fewer than --rows {}",
            args.rows
        );
    }
    let wanted = |door: &str| args.doors.is_empty() || args.doors.iter().any(|d| d == door);
    // Doors whose outside client is missing on this machine: (door, program, its arguments, what
    // to say when it does not run).
    let clients = [
        (
            "postgres",
            &args.psql,
            &["--version"][..],
            format!(
                "no psql at {} (apt-get install postgresql-client)",
                args.psql.display()
            ),
        ),
        (
            "flight-sql-adbc",
            &args.python,
            &["-c", "import adbc_driver_flightsql, pyarrow"][..],
            format!(
                "{} has no ADBC Flight SQL driver (scripts/requirements.txt; make bench uses the \
                 cached venv)",
                args.python.display()
            ),
        ),
    ];
    let mut missing: Vec<&str> = Vec::new();
    for (door, program, client_args, why) in &clients {
        if wanted(door) && !client_runs(door, program, client_args, why).await {
            missing.push(door);
        }
    }

    // (door, client) in the order they run each round; in-process first.
    let mut doors: Vec<(&str, &str)> = vec![("in-process", "DataFusion on the service's catalog")];
    doors.extend(
        DOORS
            .into_iter()
            .filter(|(door, _)| wanted(door) && !missing.contains(door)),
    );
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); doors.len()];
    let mut bytes = vec![None; doors.len()];
    // One warm-up round, then `runs` timed rounds, every door in turn in each.
    for round in 0..=args.runs {
        for (i, (door, _)) in doors.iter().enumerate() {
            let t = Instant::now();
            let fetched = match *door {
                "in-process" => in_process(&q, &sql).await,
                "flight-sql" => flight(flight_addr, &sql).await,
                "flight-sql-adbc" => adbc(&args.python, flight_addr, &sql).await,
                "postgres" => psql(&args.psql, pg_addr, &sql).await,
                "http-json" => http(&client, &base, "json", &sql).await,
                "http-csv" => http(&client, &base, "csv", &sql).await,
                "ipc-over-tcp" => ipc_over_tcp(&q, &sql).await,
                _ => http(&client, &base, "arrow", &sql).await,
            };
            let elapsed = t.elapsed().as_secs_f64();
            let (rows, b, timed) = fetched.with_context(|| format!("fetching through {door}"))?;
            let elapsed = timed.unwrap_or(elapsed);
            ensure!(
                rows == args.rows,
                "{door} returned {rows} rows, not {}",
                args.rows
            );
            if round > 0 {
                seconds[i].push(elapsed);
                bytes[i] = b;
                eprintln!(
                    "[bench] round {round}, {door}: {:.2} s, {:.0} rows/s",
                    elapsed,
                    rows as f64 / elapsed
                );
            }
        }
    }
    stop.cancel();
    q.wait().await;
    let _ = std::fs::remove_dir_all(&dir);

    let rate = |s: &[f64]| args.rows as f64 / percentile(s, 0.5);
    let base_rate = rate(&seconds[0]);
    let runs: Vec<DoorRun> = doors
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, (door, client))| DoorRun {
            door: door.to_string(),
            client: client.to_string(),
            rows_per_s: rate(&seconds[i]),
            ratio_to_in_process: rate(&seconds[i]) / base_rate,
            seconds: seconds[i].clone(),
            bytes: bytes[i],
        })
        .collect();
    // The target is Flight SQL's; said only when that door ran.
    let flight_ratio = runs
        .iter()
        .find(|r| r.door == "flight-sql")
        .map(|r| r.ratio_to_in_process);
    let target = flight_ratio.map_or(String::new(), |r| {
        format!("; Flight SQL {r:.2}x in-process (target >= 0.80)")
    });
    eprintln!(
        "[bench] {} rows of sensor, medians of {} runs: in-process {base_rate:.0} rows/s; {}{target}",
        args.rows,
        args.runs,
        runs.iter()
            .map(|r| format!(
                "{} {:.0} rows/s ({:.2}x)",
                r.door, r.rows_per_s, r.ratio_to_in_process
            ))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let report = DoorsReport {
        rows: args.rows,
        runs: args.runs,
        sql,
        lake_sensor_rows,
        in_process_rows_per_s: base_rate,
        in_process_seconds: seconds[0].clone(),
        doors: runs,
        flight_ratio,
    };
    super::emit_report(&report, args.out)
}
