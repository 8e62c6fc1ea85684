//! A role's background tasks, owned: [`Tasks`] spawns each under a name, takes the role's
//! readiness down when one ends before shutdown (a return or a panic), and awaits them all at
//! shutdown in the order they were spawned. [`every`] is the one loop of periodic work.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// The background tasks of one role. Dropping it detaches nothing that was awaited: call
/// [`Tasks::join`] at shutdown.
#[derive(Debug)]
pub struct Tasks {
    health: Health,
    stop: CancellationToken,
    running: Vec<(String, JoinHandle<()>)>,
}

impl Tasks {
    /// Tasks that report to `health`, and whose end before `stop` is a failure.
    pub fn new(health: Health, stop: CancellationToken) -> Self {
        Self {
            health,
            stop,
            running: Vec::new(),
        }
    }

    /// The role's health, which the tasks report to.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The role's shutdown token.
    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// Spawns `work` as the task `name`. If it returns or panics before shutdown, the condition
    /// `task:{name}` fails on the role's health, and the error is logged.
    pub fn spawn(&mut self, name: &str, work: impl Future<Output = ()> + Send + 'static) {
        let inner = tokio::spawn(work);
        let (health, stop, owned) = (self.health.clone(), self.stop.clone(), name.to_owned());
        let watcher = tokio::spawn(async move {
            let ended = inner.await;
            if stop.is_cancelled() && ended.is_ok() {
                return;
            }
            let why = match ended {
                Ok(()) => "ended before shutdown".to_owned(),
                Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
                Err(e) => format!("was cancelled: {e}"),
            };
            tracing::error!(task = %owned, %why, "a background task stopped; the role is not ready");
            health.fail(&format!("task:{owned}"), format!("the task {owned} {why}"));
        });
        self.running.push((name.to_owned(), watcher));
    }

    /// Spawns `round` every `period` until shutdown (see [`every`]), as the task `name`.
    pub fn spawn_every<F, Fut>(&mut self, name: &str, period: Duration, round: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.spawn(name, every(period, stop, round));
    }

    /// Awaits a role's `server` task (logging its failure, as `role`), then every task.
    pub async fn join_after(self, role: &str, server: JoinHandle<()>) {
        if let Err(e) = server.await {
            tracing::error!(role, error = %e, "the server task failed");
        }
        self.join().await;
    }

    /// Awaits every task in the order spawned. Call it once `stop` is cancelled (or the tasks end
    /// on their own).
    pub async fn join(self) {
        for (name, task) in self.running {
            if let Err(e) = task.await {
                tracing::warn!(task = %name, error = %e, "a task's watcher failed");
            }
        }
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs `round` every `period` until `stop`: waits a period, runs a round to its end, and so on.
/// Rounds never overlap, and a slow round delays the next instead of piling up. A round in
/// progress at `stop` runs to its end.
pub async fn every<F, Fut>(period: Duration, stop: CancellationToken, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        round().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_task_that_dies_takes_readiness_down_and_shutdown_awaits_the_rest() {
        let stop = CancellationToken::new();
        let health = Health::new();
        let mut tasks = Tasks::new(health.clone(), stop.clone());
        let rounds = Arc::new(AtomicU32::new(0));
        let seen = rounds.clone();
        tasks.spawn_every("counter", Duration::from_millis(5), move || {
            seen.fetch_add(1, Ordering::Relaxed);
            std::future::ready(())
        });
        tasks.spawn("doomed", async { panic!("boom") });
        let finished = Arc::new(AtomicU32::new(0));
        let done = finished.clone();
        let stopping = stop.clone();
        tasks.spawn("graceful", async move {
            stopping.cancelled().await;
            tokio::time::sleep(Duration::from_millis(30)).await;
            done.store(1, Ordering::Relaxed);
        });

        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while (health.is_ready() || rounds.load(Ordering::Relaxed) == 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let failing = health.failing();
        assert_eq!(
            failing.get("task:doomed").map(String::as_str),
            Some("the task doomed panicked: boom")
        );
        assert_eq!(failing.len(), 1, "{failing:?}");

        stop.cancel();
        tasks.join().await;
        assert_eq!(
            finished.load(Ordering::Relaxed),
            1,
            "join awaited the graceful task"
        );
        assert!(rounds.load(Ordering::Relaxed) > 0);
        // Ending at shutdown is no failure.
        assert_eq!(health.failing().len(), 1);
    }

    #[tokio::test]
    async fn a_task_that_returns_before_shutdown_is_a_failure_too() {
        let health = Health::new();
        let mut tasks = Tasks::new(health.clone(), CancellationToken::new());
        tasks.spawn("quitter", async {});
        tasks.join().await;
        assert_eq!(
            health.failing().get("task:quitter").map(String::as_str),
            Some("the task quitter ended before shutdown")
        );
    }
}
