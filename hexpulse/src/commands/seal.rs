//! `hexpulse seal`: seal complete epochs once, or every `--every` with health and metrics.

use std::sync::Arc;

use anyhow::{Context, bail};
use hexpulse_common::shutdown;
use hexpulse_common::telemetry;

use crate::cli::SealArgs;
use crate::config::Config;

pub(super) async fn seal(cfg: Config, a: SealArgs) -> anyhow::Result<()> {
    let Some(every) = a.every else {
        return seal_once(&cfg, &a).await;
    };
    let stop = shutdown::on_signals();
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    if let Some(addr) = a.listen {
        serve_sealer_health(addr, healthy.clone(), stop.clone()).await?;
    }
    loop {
        match seal_once(&cfg, &a).await {
            Ok(()) => {
                healthy.store(true, std::sync::atomic::Ordering::Relaxed);
                metrics::counter!("hexpulse_sealer_rounds_total", "outcome" => "ok").increment(1);
            }
            Err(e) if not_ready(&e) => {
                eprintln!("waiting: {e}");
                metrics::counter!("hexpulse_sealer_rounds_total", "outcome" => "waiting")
                    .increment(1);
            }
            // A scheduled sealer outlives a passing store or broker error: it reports it, turns
            // unready, and tries again next round.
            Err(e) if a.listen.is_some() => {
                tracing::error!(error = format!("{e:#}"), "sealing round failed");
                healthy.store(false, std::sync::atomic::Ordering::Relaxed);
                metrics::counter!("hexpulse_sealer_rounds_total", "outcome" => "error")
                    .increment(1);
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// The scheduled sealer's health and metrics listener.
/// Whether a sealing round stopped at an epoch that is not complete yet (the sealer waits), by the
/// error's type, whatever context was added to it.
fn not_ready(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<hexpulse_lake::epoch::EpochError>(),
        Some(hexpulse_lake::epoch::EpochError::NotReady(_))
    )
}

async fn serve_sealer_health(
    addr: std::net::SocketAddr,
    healthy: Arc<std::sync::atomic::AtomicBool>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use axum::http::StatusCode;
    let handle = telemetry::metrics_handle();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let ok = healthy.load(std::sync::atomic::Ordering::Relaxed);
                std::future::ready(if ok {
                    (StatusCode::OK, "ok")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the last sealing round failed",
                    )
                })
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || std::future::ready(handle.render())),
        );
    let bound = hexpulse_common::http::serve_in_background(addr, app, stop)
        .await
        .with_context(|| format!("binding the sealer's listener {addr}"))?;
    eprintln!("sealer health and metrics on http://{bound}/");
    Ok(())
}

async fn seal_once(cfg: &Config, a: &SealArgs) -> anyhow::Result<()> {
    use hexpulse_lake::epoch::{self, seal as s};
    let lake = hexpulse_lake::Lake::open(&cfg.process.lake_url)?;
    let rules_path = a.rules.as_deref().or(cfg.process.rules_path.as_deref());
    let rules = hexpulse_lake::rules::Rules::load(rules_path)?;
    let out = match &a.out {
        Some(o) => hexpulse_lake::Lake::open(o)?,
        None => lake.clone(),
    };
    let ecfg = &cfg.process.epoch;
    // Epochs sealed and not (all) published in the epoch Delta tables: a crash between the two.
    let published = epoch::publish::publish_sealed(&out).await?;
    if published > 0 {
        eprintln!("published {published} output(s) of epochs sealed earlier");
    }
    let epochs: Vec<i64> = match a.epoch {
        Some(e) => vec![e],
        None => {
            let Some(due) = s::due_epochs(&out, ecfg, &rules).await? else {
                eprintln!("the lake has no data yet: nothing to seal");
                return Ok(());
            };
            due
        }
    };
    if epochs.is_empty() {
        eprintln!("no epoch has passed its end plus the allowed lateness yet");
    }
    for id in epochs {
        let req = s::SealRequest {
            input: &lake,
            output: &out,
            cfg: ecfg,
            rules: &rules,
            epoch: id,
            force: a.force,
            topic: &cfg.kafka.raw_topic,
            partitions: cfg.kafka.partitions,
        };
        match s::seal_and_publish(req).await {
            Ok(sealed) => {
                let m = sealed.manifest();
                let what = match sealed {
                    s::Sealed::New(_) => "sealed",
                    s::Sealed::Already(_) => "already sealed",
                };
                out!(
                    "epoch {id} {what}{}: {} .. {}, {} devices, root {}, {}",
                    if m.forced { " (forced)" } else { "" },
                    m.start,
                    m.end,
                    m.merkle_leaves,
                    m.merkle_root,
                    epoch::manifest_path(id)
                );
            }
            Err(epoch::EpochError::NotReady(why)) => {
                bail!("{why}\n(use --force to seal anyway; the manifest records it)")
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use hexpulse_lake::epoch::EpochError;

    #[test]
    fn a_round_waits_on_the_not_ready_error_type_only() {
        let waiting = anyhow::Error::from(EpochError::NotReady("epoch 7 is not complete".into()));
        assert!(super::not_ready(&waiting));
        assert!(super::not_ready(&waiting.context("sealing epoch 7")));
        // The same words in another error are a failure, not a wait.
        let other = anyhow::Error::from(EpochError::Invalid("epoch 7 is not complete".into()));
        assert!(!super::not_ready(&other));
        assert!(!super::not_ready(&anyhow::anyhow!("is not complete")));
    }
}
