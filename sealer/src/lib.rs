//! The sealer: seals every complete epoch of the lake, in order, into deterministic reward inputs
//! (`hexpulse_lake::epoch::seal`), and publishes them in the epoch tables.
//!
//! There is one loop, [`Sealer::run`]: `hexpulse process` runs it beside its processor where
//! `[process.epoch] seal_interval` is set, and `hexpulse seal --every` runs it alone, with health,
//! readiness and metrics ([`serve_health`]). `hexpulse seal` without `--every` is one
//! [`Sealer::round`].

#![warn(missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hexpulse_common::health::Health;
use hexpulse_common::tasks::Tasks;
use hexpulse_lake::Lake;
use hexpulse_lake::epoch::seal::{self, SealRequest, Sealed};
use hexpulse_lake::epoch::{EpochConfig, EpochError, SealedEpochs, publish};
use hexpulse_lake::rules::Rules;
use tokio_util::sync::CancellationToken;

/// `hexpulse_sealer_rounds_total{outcome}`: rounds that sealed all that was due (`ok`), stopped at
/// an epoch that is not complete yet (`waiting`), or failed (`error`).
pub const ROUNDS_TOTAL: &str = "hexpulse_sealer_rounds_total";
/// `hexpulse_sealer_epochs_sealed_total`: epochs this process sealed.
pub const EPOCHS_SEALED_TOTAL: &str = "hexpulse_sealer_epochs_sealed_total";

/// The readiness condition a failed round sets, until a round succeeds.
const SEALING: &str = "sealing";

/// What one sealer seals: the input lake, where the outputs go, and the rules.
#[derive(Clone)]
pub struct Sealer {
    /// The lake whose stream tables are read.
    pub input: Lake,
    /// Where epochs are sealed and published: the input lake, or another for a re-run.
    pub output: Lake,
    /// Epoch lengths and numbering.
    pub cfg: EpochConfig,
    /// The validation and reward rules the epochs are computed under.
    pub rules: Rules,
    /// The raw topic, whose partitions' watermarks say when an epoch is complete.
    pub topic: String,
    /// The raw topic's partition count.
    pub partitions: i32,
    /// Where to mark what is sealed at once (the processor's view of sealed epochs in the same
    /// process); other processes learn it from the lake.
    pub sealed: Option<Arc<SealedEpochs>>,
}

/// An epoch that is not complete yet: the round stopped there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The epoch.
    pub epoch: i64,
    /// Why it is not complete (which partition's watermark is behind).
    pub why: String,
}

/// What a round did.
#[derive(Debug, Default)]
pub struct Round {
    /// Outputs of epochs sealed earlier and now published (a crash between the two, or another
    /// sealer).
    pub published: usize,
    /// The epochs sealed (or found sealed already), in order.
    pub sealed: Vec<(i64, Sealed)>,
    /// The epoch the round stopped at, not complete yet.
    pub waiting: Option<Waiting>,
    /// The lake holds no data yet.
    pub no_data: bool,
    /// No epoch has passed its end plus the allowed lateness yet.
    pub none_due: bool,
}

impl Sealer {
    /// Seals `epoch`, or every due epoch in order where `None`: after publishing what was sealed
    /// and not published. `force` seals an epoch that is not complete (the manifest records it).
    /// A round stops at the first epoch that is not complete ([`Round::waiting`]); other errors
    /// end it.
    pub async fn round(&self, epoch: Option<i64>, force: bool) -> Result<Round, EpochError> {
        let mut round = Round {
            published: publish::publish_sealed(&self.output).await?,
            ..Round::default()
        };
        let due = match epoch {
            Some(e) => vec![e],
            None => match seal::due_epochs(&self.output, &self.cfg, &self.rules).await? {
                Some(due) => due,
                None => {
                    round.no_data = true;
                    return Ok(round);
                }
            },
        };
        round.none_due = due.is_empty();
        for id in due {
            let req = SealRequest {
                input: &self.input,
                output: &self.output,
                cfg: &self.cfg,
                rules: &self.rules,
                epoch: id,
                force,
                topic: &self.topic,
                partitions: self.partitions,
            };
            match seal::seal_and_publish(req).await {
                Ok(sealed) => {
                    if let Some(marks) = &self.sealed {
                        marks.mark(id);
                    }
                    if matches!(sealed, Sealed::New(_)) {
                        metrics::counter!(EPOCHS_SEALED_TOTAL).increment(1);
                    }
                    round.sealed.push((id, sealed));
                }
                Err(EpochError::NotReady(why)) => {
                    round.waiting = Some(Waiting { epoch: id, why });
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(round)
    }

    /// Runs a round of every due epoch every `every`, until `stop`. A failed round is logged,
    /// counted, and makes `health` unready until a round succeeds; the next round tries again.
    pub async fn run(self, every: Duration, health: Health, stop: CancellationToken) {
        hexpulse_common::tasks::every(every, stop, || self.scheduled_round(&health)).await;
    }

    async fn scheduled_round(&self, health: &Health) {
        let outcome = match self.round(None, false).await {
            Ok(round) => {
                health.clear(SEALING);
                for (id, sealed) in &round.sealed {
                    let m = sealed.manifest();
                    tracing::info!(
                        epoch = id,
                        new = matches!(sealed, Sealed::New(_)),
                        devices = m.merkle_leaves,
                        root = %m.merkle_root,
                        "epoch sealed"
                    );
                }
                match round.waiting {
                    Some(w) => {
                        tracing::debug!(epoch = w.epoch, why = %w.why, "not sealing yet");
                        "waiting"
                    }
                    None => "ok",
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "sealing round failed; retrying next round");
                health.fail(SEALING, format!("the last sealing round failed: {e}"));
                "error"
            }
        };
        metrics::counter!(ROUNDS_TOTAL, "outcome" => outcome).increment(1);
    }
}

/// Serves the scheduled sealer's `/healthz`, `/readyz` (unready while the last round failed) and
/// `/metrics` on `addr`, as one of `tasks`. Returns the bound address.
pub async fn serve_health(addr: SocketAddr, tasks: &mut Tasks) -> std::io::Result<SocketAddr> {
    let app = hexpulse_common::health::side_router(tasks.health());
    hexpulse_common::http::serve_in_background(addr, app, "listener", tasks).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(input: Lake) -> Sealer {
        Sealer {
            output: input.clone(),
            input,
            cfg: EpochConfig::default(),
            rules: Rules::load(None).expect("default rules"),
            topic: "raw".into(),
            partitions: 2,
            sealed: None,
        }
    }

    #[tokio::test]
    async fn an_empty_lake_has_nothing_to_seal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open(dir.path().to_str().expect("utf-8")).expect("lake");
        let round = sealer(lake).round(None, false).await.expect("round");
        assert!(round.no_data);
        assert!(round.sealed.is_empty() && round.waiting.is_none());
    }

    #[tokio::test]
    async fn a_failing_round_takes_readiness_down_until_one_succeeds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open(dir.path().to_str().expect("utf-8")).expect("lake");
        // A sealed epoch whose manifest does not parse: publishing it fails every round.
        let manifest = hexpulse_lake::epoch::manifest_path(7);
        lake.put(&manifest, bytes::Bytes::from_static(b"{not json"))
            .await
            .expect("put");
        let s = sealer(lake);
        let health = Health::new();
        s.scheduled_round(&health).await;
        let failing = health.failing();
        assert!(
            failing
                .get(SEALING)
                .is_some_and(|why| why.starts_with("the last sealing round failed")
                    && why.contains("manifest of epoch 7")),
            "{failing:?}"
        );

        std::fs::remove_file(dir.path().join(&manifest)).expect("rm");
        s.scheduled_round(&health).await;
        assert!(health.is_ready(), "{:?}", health.failing());
    }
}
