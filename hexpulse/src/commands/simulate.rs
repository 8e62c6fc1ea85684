//! `hexpulse simulate`: the device simulator, with registration and accounting.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use hexpulse_common::shutdown;

use super::open_registry;
use crate::cli::SimArgs;
use crate::config::Config;

pub(super) async fn simulate(mut cfg: Config, a: SimArgs) -> anyhow::Result<()> {
    let s = &mut cfg.simulate;
    if let Some(v) = a.target_url {
        s.target_url = v
    }
    if let Some(v) = a.via {
        s.via = v
    }
    if let Some(v) = a.mqtt_broker {
        s.mqtt_broker = v
    }
    if let Some(v) = a.rate {
        s.rate = v
    }
    if let Some(v) = a.count {
        s.count = v
    }
    if let Some(v) = a.duration {
        s.duration = v
    }
    if let Some(v) = a.devices {
        s.devices = v
    }
    if let Some(v) = a.batch_size {
        s.batch_size = v
    }
    if let Some(v) = a.concurrency {
        s.concurrency = v
    }
    s.presign |= a.presign;
    if let Some(share) = a.adversarial {
        s.adversarial = hexpulse_load_tests::adversary::Adversarial::uniform(share);
    }
    if let Some(p) = &cfg.simulate.pilot {
        p.check().map_err(anyhow::Error::msg)?;
    }
    let mixer = cfg
        .simulate
        .mixer(cfg.ingest.max_body_bytes, hexpulse_common::time::now_ms());
    let probe = hexpulse_load_tests::freshness::Probe::new(cfg.simulate.seed);
    if a.register {
        let mut devices = mixer.fleet.registry_devices();
        devices.push(probe.device());
        open_registry(&cfg)?.upsert_all(devices)?;
        eprintln!(
            "registered {} simulated devices and a freshness probe in {}",
            cfg.simulate.devices,
            cfg.registry.path.display()
        );
        // Ingest and the processors re-read the registry about once a second.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut run_keys = mixer.keys();
    if a.register {
        run_keys.insert(probe.key_hex());
    }
    let ledger = a.account.then(|| {
        Arc::new(std::sync::Mutex::new(
            hexpulse_load_tests::adversary::Ledger::default(),
        ))
    });
    let lake = a
        .query_url
        .as_deref()
        .map(|u| hexpulse_load_tests::account::LakeReader::new(u, a.query_token.clone()));
    let stop = shutdown::on_signals();
    let sim_done = tokio_util::sync::CancellationToken::new();
    // The probe must be a registered device: only with --register.
    if lake.is_some() && !a.register {
        eprintln!("freshness is not measured: the probe device needs --register");
    }
    let fresh = lake.clone().filter(|_| a.register).map(|lake| {
        let (target, stop, ledger) = (
            cfg.simulate.target_url.clone(),
            sim_done.clone(),
            ledger.clone(),
        );
        tokio::spawn(async move {
            probe
                .run(
                    &target,
                    &lake,
                    hexpulse_load_tests::freshness::Timing::default(),
                    stop,
                    ledger,
                )
                .await
        })
    });
    let summary =
        hexpulse_load_tests::sim::run(&cfg.simulate, mixer, stop, true, ledger.clone()).await?;
    sim_done.cancel();
    let mut out = serde_json::to_value(&summary)?;
    if let Some(f) = fresh {
        out["freshness"] = serde_json::to_value(f.await?)?;
    }
    let mut mismatches = 0;
    if let (Some(ledger), Some(lake)) = (ledger, lake) {
        // The run and the probe are over: nothing writes the ledger any more.
        let ledger = std::mem::take(&mut *ledger.lock().expect("lock"));
        let report =
            hexpulse_load_tests::account::account(&ledger, &lake, &run_keys, a.settle, true)
                .await?;
        mismatches = report.mismatch_total;
        out["accounting"] = serde_json::to_value(&report)?;
    }
    let text = serde_json::to_string_pretty(&out)?;
    out!("{text}");
    if let Some(path) = a.out {
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    if mismatches > 0 {
        bail!("accounting found {mismatches} mismatches (see \"accounting\" above)");
    }
    Ok(())
}
