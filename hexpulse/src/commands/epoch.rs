//! `hexpulse epoch ...`: list, show, prove, verify and diff sealed epochs.

use anyhow::Context;

use crate::cli::EpochCmd;
use crate::config::Config;

pub(super) async fn epoch(cfg: Config, c: EpochCmd) -> anyhow::Result<()> {
    use hexpulse_lake::epoch::{self, seal as s};
    let lake = hexpulse_lake::Lake::open(&cfg.process.lake_url)?;
    match c {
        EpochCmd::List => {
            for id in epoch::sealed_ids(&lake).await? {
                if let Some(m) = s::read_manifest(&lake, id).await? {
                    out!(
                        "{id:>8}  {} .. {}  {:>6} devices  root {}{}",
                        m.start,
                        m.end,
                        m.merkle_leaves,
                        m.merkle_root,
                        if m.forced { "  (forced)" } else { "" }
                    );
                }
            }
        }
        EpochCmd::Show { epoch: id } => {
            let m = s::read_manifest(&lake, id)
                .await?
                .with_context(|| format!("epoch {id} is not sealed"))?;
            out!("{}", serde_json::to_string_pretty(&m)?);
        }
        EpochCmd::Proof { epoch: id, device } => {
            let p = s::build_proof(&lake, id, &device.to_ascii_lowercase()).await?;
            out!("{}", serde_json::to_string_pretty(&p)?);
        }
        EpochCmd::Verify { proof, root } => {
            let text = if proof.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&proof)
                    .with_context(|| format!("reading {}", proof.display()))?
            };
            let p: s::Proof = serde_json::from_str(&text).context("parsing the proof")?;
            let root = match root {
                Some(r) => r,
                None => {
                    s::read_manifest(&lake, p.epoch)
                        .await?
                        .with_context(|| format!("epoch {} is not sealed in this lake", p.epoch))?
                        .merkle_root
                }
            };
            p.verify(&root)?;
            out!(
                "ok: device {} has {} points in epoch {} (root {root})",
                p.device_key,
                p.row.get("reward_points").cloned().unwrap_or_default(),
                p.epoch
            );
        }
        EpochCmd::Diff { epoch: id, other } => {
            let b = hexpulse_lake::Lake::open(&other)?;
            let d = s::diff(&lake, &b, id).await?;
            if d.is_empty() {
                out!("no differences");
            }
            for x in &d {
                let show = |p: Option<u64>| p.map_or("-".to_string(), |p| p.to_string());
                out!(
                    "{}  points {} -> {}{}",
                    x.device_key,
                    show(x.points_a),
                    show(x.points_b),
                    x.changed
                        .iter()
                        .filter(|c| c.0 != "reward_points")
                        .map(|c| format!("  {}: {} -> {}", c.0, c.1, c.2))
                        .collect::<String>()
                );
            }
            eprintln!("{} device(s) differ", d.len());
        }
    }
    Ok(())
}
