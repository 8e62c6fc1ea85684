//! `hexpulse up`: every role in one process, with demo traffic and the broker watch.

use hexpulse_common::shutdown;
use hexpulse_ingest::server::Ingest;

use super::open_registry;
use std::time::Duration;

use crate::broker_watch;
use crate::cli::UpArgs;
use crate::config::Config;

pub(super) async fn up(mut cfg: Config, args: UpArgs) -> anyhow::Result<()> {
    let UpArgs {
        no_traffic,
        rate,
        broker_restart,
        broker_stall,
        mqtt,
    } = args;
    let watch = broker_restart.map(|restart| broker_watch::Watch {
        restart,
        stall: broker_stall,
        every: (broker_stall / 6).max(Duration::from_secs(1)),
    });
    let registry = open_registry(&cfg)?;
    if let Some(p) = &cfg.simulate.pilot {
        p.check().map_err(anyhow::Error::msg)?;
    }
    let run_start = hexpulse_common::time::now_ms();
    let mixer = cfg.simulate.mixer(cfg.ingest.max_body_bytes, run_start);
    registry.upsert_all(mixer.fleet.registry_devices())?;
    // A fresh admin token for this run unless the config names one, so that the README's registry
    // examples work under `make up`.
    let admin_token = if cfg.ingest.admin_token_sha256.is_empty() {
        let mut bytes = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
        let token = hex::encode(bytes);
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
        cfg.ingest.admin_token_sha256 = sha256.clone();
        // The query service's admin role too: its /metrics, raw tables and every group.
        cfg.query
            .auth
            .tokens
            .push(hexpulse_query::config::TokenConfig {
                name: "make-up-admin".into(),
                role: "admin".into(),
                sha256,
            });
        Some(token)
    } else {
        None
    };
    tracing::info!(config = %cfg.redacted(), "starting hexpulse up");
    let stop = shutdown::on_signals();
    let watch_note = watch.as_ref().map(|w| {
        format!(
            " (watched: restarted when it acknowledges no produce request for {})",
            humantime::format_duration(w.stall)
        )
    });
    let watch = watch.map(|w| tokio::spawn(w.run(cfg.kafka.clone(), stop.clone())));
    let ingest = Ingest::start(
        cfg.ingest.clone(),
        cfg.kafka.clone(),
        registry.clone(),
        stop.clone(),
    )
    .await?;
    let bridge = if mqtt {
        Some(
            hexpulse_ingest::server::mqtt::start(
                cfg.ingest.clone(),
                cfg.mqtt.clone(),
                cfg.kafka.clone(),
                registry.clone(),
                stop.clone(),
            )
            .await?,
        )
    } else {
        None
    };
    let lake = hexpulse_lake::Lake::open(&cfg.process.lake_url)?;
    let mut processor = hexpulse_processors::run::start(
        cfg.process.clone(),
        cfg.kafka.clone(),
        registry,
        lake,
        stop.clone(),
    )
    .await?;
    super::seal::beside(&cfg, &mut processor);
    let mut qcfg = cfg.query.clone();
    qcfg.lake_url = cfg.process.lake_url.clone();
    qcfg.epoch = cfg.process.epoch.clone();
    // The processor's live rows, unless sources are configured (or the live tier is off).
    if qcfg.live.sources.is_empty() && !cfg.process.live.interval.is_zero() {
        qcfg.live.sources = vec![format!("http://{}", processor.addr)];
    }
    let query = hexpulse_query::Query::start(
        qcfg,
        hexpulse_lake::Lake::open(&cfg.process.lake_url)?,
        stop.clone(),
    )
    .await?;
    // The alerts role, in this process (its metrics are on the query service's /metrics).
    let mut acfg = cfg.query.clone();
    acfg.lake_url = cfg.process.lake_url.clone();
    acfg.alerts.listen = None;
    let alerts = tokio::spawn(hexpulse_query::alerts::run(
        acfg,
        hexpulse_lake::Lake::open(&cfg.process.lake_url)?,
        stop.clone(),
    ));
    let demo_pilot = if no_traffic {
        None
    } else {
        demo_pilot(&cfg, run_start).await?
    };
    let base = format!("http://{}", ingest.addr);
    let qbase = format!("http://{}", query.addr);
    out!();
    out!("Hexpulse is up.");
    out!("  ingest   POST {base}/v1/readings   (protobuf or JSON batches of signed readings)");
    out!("  health   {base}/healthz  {base}/readyz");
    if cfg.ingest.grpc.enabled {
        out!(
            "  grpc     {base}   hexpulse.v1.Ingest/Submit and /Stream (schemas/proto/hexpulse/v1/ingest.proto)"
        );
    }
    match &bridge {
        Some(b) => out!(
            "  mqtt     mqtt://{} topic {} -> answers on {}   bridge health http://{}/readyz",
            cfg.mqtt.broker,
            cfg.mqtt.topic,
            if cfg.mqtt.answers_topic.is_empty() {
                "(off)"
            } else {
                &cfg.mqtt.answers_topic
            },
            b.addr
        ),
        None => out!(
            "  mqtt     off (make up runs the bridge when Mosquitto is installed, or with UP_MQTT_BROKER=HOST:PORT)"
        ),
    }
    let metrics = ingest
        .admin_addr
        .map_or_else(|| base.clone(), |a| format!("http://{a}"));
    out!(
        "  metrics  {metrics}/metrics   processor http://{}/metrics   query {}/metrics{}",
        processor.addr,
        query
            .admin_addr
            .map_or_else(|| qbase.clone(), |a| format!("http://{a}")),
        if query.admin_addr.is_none() && admin_token.is_some() {
            " (with the admin token below)"
        } else {
            ""
        }
    );
    match &admin_token {
        Some(t) => out!(
            "  admin    {base}/v1/admin/devices   (add and remove devices; this run's token, for the \
             query service's admin role too: Authorization: Bearer {t})"
        ),
        None => {
            out!("  admin    {base}/v1/admin/devices   (the token of [ingest] admin_token_sha256)")
        }
    }
    out!(
        "  lake     {} (Delta tables: heartbeat/ sensor/ road/ rejected/, and epochs/)",
        cfg.process.lake_url
    );
    out!(
        "  broker   {}   topic {}{}",
        cfg.kafka.brokers,
        cfg.kafka.raw_topic,
        watch_note.unwrap_or_default()
    );
    out!(
        "  registry {} ({} simulated devices)",
        cfg.registry.path.display(),
        cfg.simulate.devices
    );
    let ecfg = &cfg.process.epoch;
    let current = ecfg.id_of(hexpulse_common::time::now_ms())?;
    // The commands below name this binary by its path: it is not on PATH.
    let exe =
        std::env::current_exe().map_or_else(|_| "hexpulse".into(), |p| p.display().to_string());
    let env = std::env::var("HEXPULSE_CONFIG")
        .map(|c| format!("HEXPULSE_CONFIG={c} "))
        .unwrap_or_default();
    let env = format!("{env}{exe}");
    out!(
        "  epochs   {} long (now epoch {current}); the processor seals one when every partition's \
         watermark is past its end plus the allowed lateness. Once epoch {current} has ended, to seal \
         it early and prove a device:",
        humantime::format_duration(ecfg.length)
    );
    out!("           {env} seal --epoch {current} --force; {env} epoch show --epoch {current}");
    out!(
        "           {env} epoch proof --epoch {current} --device KEY > p.json; {env} epoch verify --proof p.json"
    );
    out!("  map      {qbase}/");
    out!("  query    {qbase}/openapi.json (every route)   {qbase}/v1/epochs");
    out!("           curl -s {qbase}/v1/sql -d 'SELECT count(*) AS heartbeats FROM heartbeat'");
    out!(
        "           {qbase}/v1/coverage?bbox=13.0,52.3,13.8,52.7&res=8   (GeoJSON hexes around Berlin)"
    );
    out!("           {qbase}/v1/deadzones?bbox=13.0,52.3,13.8,52.7&res=8");
    out!(
        "           {qbase}/v1/devices/status?bbox=13.0,52.3,13.8,52.7   (device status; one: /v1/devices/KEY/status)"
    );
    if let Some(pg) = query.pg_addr {
        let (host, port) = (pg.ip(), pg.port());
        out!(
            "  postgres psql -h {host} -p {port} -U anonymous hexpulse   (the same SQL over the PostgreSQL protocol)"
        );
        if let Some(t) = &admin_token {
            out!(
                "           PGPASSWORD={t} psql -h {host} -p {port} -U admin hexpulse   (raw rows too)"
            );
        }
    }
    if let Some(flight) = query.flight_addr {
        out!("  flight   grpc://{flight}   (Arrow Flight SQL: ADBC, JDBC; the same SQL and rules)");
    }
    if let Some(p) = &demo_pilot {
        out!(
            "  pilot    {qbase}/v1/pilots/{}/report   ({:?}: new hotspots from {}; the map's Pilots panel)",
            p.id,
            p.name,
            p.start
        );
    }
    out!(
        "  alerts   {qbase}/v1/alerts/rules   (rules evaluated every {}; webhooks to the hosts of [query.alerts] webhook_hosts: {:?})",
        humantime::format_duration(cfg.query.alerts.interval),
        cfg.query.alerts.webhook_hosts
    );
    out!("           {qbase}/v1/sensors/series?metric=pm2_5&bbox=13.0,52.3,13.8,52.7&interval=5m");
    out!(
        "           {qbase}/v1/tiles/coverage/{{z}}/{{x}}/{{y}}.mvt   (vector tiles: coverage, air, road)"
    );
    out!("Ctrl-C stops everything.");
    out!();
    let traffic = if no_traffic {
        None
    } else {
        cfg.simulate.target_url = base;
        if let Some(r) = rate {
            cfg.simulate.rate = r;
        }
        let stop = stop.clone();
        Some(tokio::spawn(async move {
            hexpulse_load_tests::sim::run(&cfg.simulate, mixer, stop, true, None).await
        }))
    };
    ingest.wait().await;
    if let Some(b) = bridge {
        b.wait().await;
    }
    if let Err(e) = processor.wait().await {
        tracing::error!(error = %e, "processor failed");
    }
    query.wait().await;
    match alerts.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "alerts role failed"),
        Err(e) => tracing::error!(error = %e, "alerts role task"),
    }
    if let Some(t) = traffic {
        match t.await {
            Ok(Ok(summary)) => out!("{}", serde_json::to_string_pretty(&summary)?),
            Ok(Err(e)) => tracing::error!(error = %e, "demo traffic"),
            Err(e) => tracing::error!(error = %e, "demo traffic task"),
        }
    }
    if let Some(w) = watch {
        let _ = w.await;
    }
    Ok(())
}

/// The pilot of the demo traffic's pilot scenario (`[simulate.pilot]`), starting when its new
/// hotspots do. One made by an earlier `make up` under the same name is replaced.
async fn demo_pilot(
    cfg: &Config,
    run_start_ms: i64,
) -> anyhow::Result<Option<hexpulse_query::pilots::Pilot>> {
    let (Some(scenario), Some(start)) = (
        &cfg.simulate.pilot,
        cfg.simulate.pilot_start_ms(run_start_ms),
    ) else {
        return Ok(None);
    };
    const BY: &str = "make up";
    let pilots = hexpulse_query::pilots::Pilots::new(
        hexpulse_lake::Lake::open(&cfg.process.lake_url)?,
        cfg.query.pilots.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    for old in pilots.list().await? {
        if old.name == scenario.name && old.created_by == BY {
            pilots.delete(&old.id).await?;
        }
    }
    let new = hexpulse_query::pilots::NewPilot {
        name: scenario.name.clone(),
        area: Some(scenario.polygon()),
        cells: None,
        start: hexpulse_query::params::rfc3339(start),
        end: None,
        baseline: None,
    };
    Ok(Some(
        pilots
            .create(new, BY, hexpulse_common::time::now_ms())
            .await?,
    ))
}
