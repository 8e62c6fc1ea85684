//! `hexpulse seal`: seal complete epochs once, or every `--every` (the sealer's loop,
//! `hexpulse_sealer`) with health and metrics; and the sealer beside `hexpulse process`.

use anyhow::bail;
use hexpulse_common::health::Health;
use hexpulse_common::shutdown;
use hexpulse_common::tasks::Tasks;
use hexpulse_lake::Lake;
use hexpulse_lake::epoch::{self, SealedEpochs, seal::Sealed};
use hexpulse_lake::rules::Rules;
use hexpulse_sealer::Sealer;

use crate::cli::SealArgs;
use crate::config::Config;

/// The sealer of `cfg`'s epochs and raw topic over `input`, writing to `output`.
fn of(
    cfg: &Config,
    input: Lake,
    output: Lake,
    rules: Rules,
    sealed: Option<std::sync::Arc<SealedEpochs>>,
) -> Sealer {
    Sealer {
        input,
        output,
        cfg: cfg.process.epoch.clone(),
        rules,
        topic: cfg.kafka.raw_topic.clone(),
        partitions: cfg.kafka.partitions,
        sealed,
    }
}

/// The sealer of `cfg` over its lake, writing to `out` (the lake itself unless a re-run).
fn sealer(
    cfg: &Config,
    rules: Option<&std::path::Path>,
    out: Option<&str>,
) -> anyhow::Result<Sealer> {
    let input = Lake::open(&cfg.process.lake_url)?;
    let rules = Rules::load(rules.or(cfg.process.rules_path.as_deref()))?;
    let output = match out {
        Some(o) => Lake::open(o)?,
        None => input.clone(),
    };
    Ok(of(cfg, input, output, rules, None))
}

/// Runs the sealer beside a processor where `[process.epoch] seal_interval` is set: one of the
/// processor's tasks, marking what it seals in the processor's view, unready while rounds fail.
pub(super) fn beside(cfg: &Config, p: &mut hexpulse_processors::run::Running) {
    let every = cfg.process.epoch.seal_interval;
    if every.is_zero() {
        return;
    }
    let (lake, rules, sealed) = (p.lake.clone(), p.rules.clone(), p.sealed.clone());
    let s = of(cfg, lake.clone(), lake, rules, Some(sealed));
    let (health, stop) = (p.health.clone(), p.tasks.stop().clone());
    p.tasks.spawn("sealer", s.run(every, health, stop));
}

pub(super) async fn seal(cfg: Config, a: SealArgs) -> anyhow::Result<()> {
    let s = sealer(&cfg, a.rules.as_deref(), a.out.as_deref())?;
    let Some(every) = a.every else {
        return seal_once(&s, &a).await;
    };
    let stop = shutdown::on_signals();
    let mut tasks = Tasks::new(Health::new(), stop.clone());
    if let Some(addr) = a.listen {
        let bound = hexpulse_sealer::serve_health(addr, &mut tasks)
            .await
            .map_err(|e| anyhow::anyhow!("binding the sealer's listener {addr}: {e}"))?;
        eprintln!("sealer health and metrics on http://{bound}/");
    }
    eprintln!(
        "sealing every complete epoch every {} until Ctrl-C",
        humantime::format_duration(every)
    );
    let health = tasks.health().clone();
    s.run(every, health, stop).await;
    tasks.join().await;
    Ok(())
}

async fn seal_once(s: &Sealer, a: &SealArgs) -> anyhow::Result<()> {
    let round = s.round(a.epoch, a.force).await?;
    if round.published > 0 {
        eprintln!(
            "published {} output(s) of epochs sealed earlier",
            round.published
        );
    }
    if round.no_data {
        eprintln!("the lake has no data yet: nothing to seal");
        return Ok(());
    }
    if round.none_due {
        eprintln!("no epoch has passed its end plus the allowed lateness yet");
    }
    for (id, sealed) in &round.sealed {
        let m = sealed.manifest();
        let what = match sealed {
            Sealed::New(_) => "sealed",
            Sealed::Already(_) => "already sealed",
        };
        out!(
            "epoch {id} {what}{}: {} .. {}, {} devices, root {}, {}",
            if m.forced { " (forced)" } else { "" },
            m.start,
            m.end,
            m.merkle_leaves,
            m.merkle_root,
            epoch::manifest_path(*id)
        );
    }
    if let Some(w) = round.waiting {
        bail!(
            "{}\n(use --force to seal anyway; the manifest records it)",
            w.why
        );
    }
    Ok(())
}
