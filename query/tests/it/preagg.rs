//! Finding 16 of round two: sensor aggregates answer the same whatever stage a seal is in. The
//! rewrite onto `sensor_hex_hourly` applies only once the epoch's manifest exists and its hourly
//! output is published; before that (outputs written, the manifest not yet; or the manifest
//! written, publishing not yet), raw rows answer.

use std::sync::Arc;
use std::time::Duration;

use hexpulse_lake::Lake;
use hexpulse_lake::epoch::EpochConfig;
use hexpulse_lake::epoch::publish;
use hexpulse_query::catalog::Catalog;
use hexpulse_query::datafusion::arrow::util::pretty::pretty_format_batches;
use hexpulse_query::datafusion::execution::runtime_env::RuntimeEnv;
use hexpulse_testkit::scenario;

use crate::support::*;

const PER_METRIC: &str = "SELECT metric, count(*) AS n, min(value) AS lo, max(value) AS hi \
                          FROM sensor GROUP BY metric ORDER BY metric";

/// The answer, and whether the plan reads the sealed hourly rows.
async fn answer(lake: &Lake) -> (String, bool) {
    let catalog = Catalog::open(
        lake.clone(),
        Arc::new(RuntimeEnv::default()),
        64 << 20,
        None,
    )
    .await
    .unwrap();
    // The context of SQL without `raw`: the rewrite holds in it as in the service's own.
    let ctx = catalog.sql_context(false);
    let rows = ctx.sql(PER_METRIC).await.unwrap().collect().await.unwrap();
    let plan = ctx
        .sql(&format!("EXPLAIN {PER_METRIC}"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let plan = pretty_format_batches(&plan).unwrap().to_string();
    (
        pretty_format_batches(&rows).unwrap().to_string(),
        plan.contains(hexpulse_query::preagg::HOURLY),
    )
}

async fn copy(from: &Lake, to: &Lake, path: &str) {
    let bytes = from.get(path).await.unwrap().expect("file exists");
    to.put(path, bytes).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensor_aggregates_agree_at_every_stage_of_a_seal() {
    let now = yesterday_noon();
    let cfg = EpochConfig {
        length: Duration::from_secs(86_400),
        origin: "2026-01-01T00:00:00Z".into(),
        ..EpochConfig::default()
    };
    let id = cfg.id_of(now).unwrap();
    let dir = write_lake(&scenario::build(now, 10), now, 2, 25).await;
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let (raw, rewritten) = answer(&lake).await;
    assert!(!rewritten, "nothing sealed yet");
    assert!(raw.contains("pm2_5"), "{raw}");

    // A seal computed elsewhere, then copied in stage by stage.
    let elsewhere = tempfile::tempdir().unwrap();
    let sealer = Lake::open(elsewhere.path().to_str().unwrap()).unwrap();
    let m = force_seal(&lake, &sealer, &cfg, id).await.unwrap();

    // 1. The outputs are written, the manifest is not.
    for o in &m.outputs {
        copy(&sealer, &lake, &o.path).await;
    }
    assert_eq!(
        answer(&lake).await,
        (raw.clone(), false),
        "outputs without a manifest"
    );

    // 2. The manifest is written: sealed, but the hourly rows are not published.
    copy(&sealer, &lake, &hexpulse_lake::epoch::manifest_path(id)).await;
    assert_eq!(
        answer(&lake).await,
        (raw.clone(), false),
        "sealed, not published"
    );

    // 3. Published: the rewrite applies, with the same answer.
    assert_eq!(publish::publish_sealed(&lake).await.unwrap(), 4);
    assert_eq!(answer(&lake).await, (raw, true), "published");
}
