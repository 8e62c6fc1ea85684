//! The alerts role: evaluates every rule each `interval`, keeps each rule's firing state, and
//! delivers its events to the rule's webhook, at least once and each under one id.
//!
//! Per rule, one JSON object under `_alerts/state/` holds the subjects that fire (with their event
//! ids) and the events not yet delivered (the outbox). A firing makes a `firing` event and its end a
//! `resolved` event; each is written there before any delivery is tried, and an event leaves the
//! outbox only once its receiver answered 2xx: a crash in between delivers it again under the same
//! id, which receivers de-duplicate; a restart reads the state and sends nothing for subjects that
//! fired already. A firing's id is a digest of the rule, the subject and the time its condition
//! began to hold, so the same firing has the same id even if the state was lost; its end's id is a
//! digest of the firing's. One alerts role per lake: two would each deliver every event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hexpulse_common::health::Health;
use hexpulse_common::time::now_ms;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::eval::{Firing, Sources};
use super::{AlertsConfig, Rule, Rules, state_path};
use crate::params::rfc3339;

const EVALUATIONS: &str = "hexpulse_alerts_evaluations_total";
const FIRED: &str = "hexpulse_alerts_fired_total";
const RESOLVED: &str = "hexpulse_alerts_resolved_total";
const DELIVERIES: &str = "hexpulse_alerts_deliveries_total";
const DROPPED: &str = "hexpulse_alerts_dropped_total";
const PENDING: &str = "hexpulse_alerts_pending_events";
const ROUND_SECONDS: &str = "hexpulse_alerts_round_seconds";
/// Rules evaluated and delivered at once: a slow receiver holds up its own rule only.
const CONCURRENT_RULES: usize = 8;
/// The readiness condition while the lake cannot be read.
const LAKE: &str = "lake";

/// A subject that fires, and its event's id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fired {
    pub event_id: String,
    pub since_ms: i64,
    pub fired_at_ms: i64,
}

/// An event not delivered yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub event: Value,
    pub event_id: String,
    /// When the event was made (a firing's, or its end's): `give_up_after` counts from it.
    pub fired_at_ms: i64,
    pub attempts: u32,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
}

impl Pending {
    /// `event` under `event_id`, made at `now` and due at once.
    fn new(event: Value, event_id: String, now: i64) -> Pending {
        Pending {
            event,
            event_id,
            fired_at_ms: now,
            attempts: 0,
            next_attempt_ms: now,
            last_error: None,
        }
    }
}

/// A rule's stored state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    /// Subject → its firing.
    pub firing: BTreeMap<String, Fired>,
    pub outbox: Vec<Pending>,
}

/// The id of the event of `subject` firing under `rule` since `since_ms` (32 hexadecimal digits).
pub fn event_id(rule: &str, subject: &str, since_ms: i64) -> String {
    let mut h = Sha256::new();
    h.update(rule.as_bytes());
    h.update([0]);
    h.update(subject.as_bytes());
    h.update(since_ms.to_le_bytes());
    hex::encode(&h.finalize()[..16])
}

/// The id of the event that ends the firing `firing_event_id` (32 hexadecimal digits): the first
/// 16 bytes of SHA-256 over that id, a zero byte and `resolved`.
pub fn resolved_id(firing_event_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(firing_event_id.as_bytes());
    h.update([0]);
    h.update(b"resolved");
    hex::encode(&h.finalize()[..16])
}

/// `X-Hexpulse-Signature`'s value: `sha256=` and the hexadecimal HMAC-SHA256, under `secret`, of
/// the timestamp (`X-Hexpulse-Timestamp`, Unix seconds), a dot, and the body.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Applies one evaluation to `state`: each new firing puts a `firing` event in the outbox, and each
/// firing whose subject no longer fires (and is not `unknown`) ends and puts a `resolved` event
/// there. Whether anything changed.
pub fn apply(
    rule: &Rule,
    state: &mut RuleState,
    firing: Vec<Firing>,
    unknown: &[String],
    watermark_ms: i64,
    now: i64,
) -> bool {
    let mut changed = false;
    let live: std::collections::BTreeSet<&str> = firing
        .iter()
        .map(|f| f.subject.as_str())
        .chain(unknown.iter().map(String::as_str))
        .collect();
    let ended = state
        .firing
        .extract_if(.., |subject, _| !live.contains(subject.as_str()));
    for (subject, f) in ended {
        let id = resolved_id(&f.event_id);
        tracing::info!(rule = %rule.id, subject, event_id = %id, firing_event_id = %f.event_id, "alert resolved");
        metrics::counter!(RESOLVED).increment(1);
        let event = json!({
            "event_id": id,
            "rule": rule_summary(rule),
            "subject": subject,
            "state": "resolved",
            "firing_event_id": f.event_id,
            "since": rfc3339(f.since_ms),
            "fired_at": rfc3339(f.fired_at_ms),
            "resolved_at": rfc3339(now),
            "watermark": rfc3339(watermark_ms),
            "details": {},
        });
        state.outbox.push(Pending::new(event, id, now));
        changed = true;
    }
    for f in firing {
        if state.firing.contains_key(&f.subject) {
            continue;
        }
        let id = event_id(&rule.id, &f.subject, f.since_ms);
        let event = json!({
            "event_id": id,
            "rule": rule_summary(rule),
            "subject": f.subject,
            "state": "firing",
            "since": rfc3339(f.since_ms),
            "fired_at": rfc3339(now),
            "watermark": rfc3339(watermark_ms),
            "details": f.details,
        });
        tracing::info!(rule = %rule.id, subject = %f.subject, event_id = %id, "alert fired");
        metrics::counter!(FIRED, "kind" => rule.condition.kind()).increment(1);
        state.outbox.push(Pending::new(event, id.clone(), now));
        state.firing.insert(
            f.subject,
            Fired {
                event_id: id,
                since_ms: f.since_ms,
                fired_at_ms: now,
            },
        );
        changed = true;
    }
    changed
}

/// The rule as an event names it.
fn rule_summary(rule: &Rule) -> Value {
    json!({"id": rule.id, "name": rule.name, "kind": rule.condition.kind()})
}

/// The delay before retry number `attempts` (1 for the first retry).
pub fn backoff(min: Duration, max: Duration, attempts: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX);
    min.saturating_mul(factor).min(max)
}

/// The alerts role's parts.
pub struct Alerts {
    rules: Rules,
    sources: Sources,
    client: reqwest::Client,
    health: Health,
}

impl Alerts {
    pub fn new(rules: Rules, sources: Sources, health: Health) -> Result<Alerts, String> {
        rules.config().check()?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(rules.config().timeout)
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        Ok(Alerts {
            rules,
            sources,
            client,
            health,
        })
    }

    /// Evaluates and delivers at once, then every `interval` until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let period = self.rules.config().interval;
        self.round().await;
        hexpulse_common::tasks::every(period, stop, move || {
            let me = self.clone();
            async move { me.round().await }
        })
        .await;
    }

    /// One round: refresh what the rules read, then each rule.
    pub async fn round(&self) {
        let started = std::time::Instant::now();
        let watermark = match self.sources.refresh().await {
            Ok(w) => {
                self.health.clear(LAKE);
                w
            }
            Err(e) => {
                // Deliveries go on; evaluations wait for the lake.
                tracing::warn!(error = %e, "alerts: reading the lake failed");
                self.health
                    .fail(LAKE, format!("reading the lake failed: {e}"));
                None
            }
        };
        let rules = match self.rules.list().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "alerts: listing the rules failed");
                self.health
                    .fail(LAKE, format!("listing the rules failed: {e}"));
                return;
            }
        };
        let pending: usize = futures::stream::iter(rules)
            .map(|rule| async move { self.rule_round(&rule, watermark).await })
            .buffer_unordered(CONCURRENT_RULES)
            .fold(0, |n, p| async move { n + p })
            .await;
        metrics::gauge!(PENDING).set(pending as f64);
        metrics::histogram!(ROUND_SECONDS).record(started.elapsed().as_secs_f64());
    }

    /// Evaluates one rule (when the watermark is known) and delivers its due events; the events
    /// still pending.
    async fn rule_round(&self, rule: &Rule, watermark: Option<i64>) -> usize {
        let lake = self.sources.catalog.lake();
        let path = state_path(&rule.id);
        let mut state: RuleState = match lake.get(&path).await {
            Ok(Some(b)) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::error!(rule = %rule.id, error = %e, "alerts: unreadable state, starting afresh");
                RuleState::default()
            }),
            Ok(None) => RuleState::default(),
            Err(e) => {
                tracing::warn!(rule = %rule.id, error = %e, "alerts: reading the state failed");
                return 0;
            }
        };
        let mut changed = false;
        if let Some(w) = watermark {
            match self.sources.evaluate(&rule.condition, w).await {
                Ok(outcome) => {
                    metrics::counter!(EVALUATIONS, "result" => "ok").increment(1);
                    changed |= apply(
                        rule,
                        &mut state,
                        outcome.firing,
                        &outcome.unknown,
                        w,
                        now_ms(),
                    );
                }
                Err(e) => {
                    metrics::counter!(EVALUATIONS, "result" => "error").increment(1);
                    tracing::warn!(rule = %rule.id, error = %e, "alerts: evaluation failed");
                }
            }
        }
        // The new firings are stored before their first delivery.
        if changed && !self.save(rule, &state).await {
            return state.outbox.len();
        }
        if self.deliver_due(rule, &mut state).await {
            self.save(rule, &state).await;
        }
        state.outbox.len()
    }

    async fn save(&self, rule: &Rule, state: &RuleState) -> bool {
        let bytes = serde_json::to_vec(state).expect("state serialises");
        // A rule deleted meanwhile keeps no state.
        match self.rules.get(&rule.id).await {
            Ok(Some(_)) => {}
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(rule = %rule.id, error = %e, "alerts: reading the rule failed");
                return false;
            }
        }
        let lake = self.sources.catalog.lake();
        match lake.put(&state_path(&rule.id), bytes.into()).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(rule = %rule.id, error = %e, "alerts: storing the state failed");
                false
            }
        }
    }

    /// Sends the rule's due events (`deliver_outbox`): whether its outbox changed.
    async fn deliver_due(&self, rule: &Rule, state: &mut RuleState) -> bool {
        deliver_outbox(
            &rule.id,
            self.rules.config(),
            state,
            now_ms,
            |p| async move { self.send(rule, &p).await },
        )
        .await
    }

    async fn send(&self, rule: &Rule, p: &Pending) -> Result<(), String> {
        // The allowlist may have shrunk since the rule was made.
        if let Some(why) = self.rules.config().refuse_url(&rule.webhook.url) {
            return Err(why);
        }
        let body = serde_json::to_vec(&p.event).expect("event serialises");
        let ts = now_ms() / 1000;
        let r = self
            .client
            .post(&rule.webhook.url)
            .header("content-type", "application/json")
            .header("x-hexpulse-event-id", &p.event_id)
            .header("x-hexpulse-timestamp", ts.to_string())
            .header(
                "x-hexpulse-signature",
                signature(&rule.webhook.secret, ts, &body),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| format!("{e}"))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {}", r.status()))
        }
    }
}

/// Sends the outbox's due events in order through `send`, until one fails: the receiver is then
/// taken to be down, and the rest wait for the next round, so a receiver that hangs costs its rule
/// one `timeout` a round, not one per event. A failed event waits its backoff, or is dropped once
/// it is `give_up_after` old. Whether the outbox changed.
async fn deliver_outbox<F: Future<Output = Result<(), String>>>(
    rule_id: &str,
    cfg: &AlertsConfig,
    state: &mut RuleState,
    now_ms: impl Fn() -> i64,
    send: impl Fn(Pending) -> F,
) -> bool {
    let mut changed = false;
    let mut failed = false;
    let mut keep = Vec::new();
    for mut p in std::mem::take(&mut state.outbox) {
        let now = now_ms();
        if failed || p.next_attempt_ms > now {
            keep.push(p);
            continue;
        }
        changed = true;
        match send(p.clone()).await {
            Ok(()) => {
                metrics::counter!(DELIVERIES, "result" => "ok").increment(1);
                tracing::info!(rule = %rule_id, event_id = %p.event_id, attempts = p.attempts + 1, "alert delivered");
            }
            Err(e) => {
                metrics::counter!(DELIVERIES, "result" => "failed").increment(1);
                failed = true;
                p.attempts += 1;
                if now - p.fired_at_ms >= cfg.give_up_after.as_millis() as i64 {
                    metrics::counter!(DROPPED).increment(1);
                    tracing::error!(rule = %rule_id, event_id = %p.event_id, attempts = p.attempts, error = %e, "alert dropped: not delivered within give_up_after");
                    continue;
                }
                let wait = backoff(cfg.backoff_min, cfg.backoff_max, p.attempts);
                tracing::warn!(rule = %rule_id, event_id = %p.event_id, attempts = p.attempts, retry_in = ?wait, error = %e, "alert delivery failed");
                p.next_attempt_ms = now + wait.as_millis() as i64;
                p.last_error = Some(e);
                keep.push(p);
            }
        }
    }
    state.outbox = keep;
    changed
}

/// Runs the alerts role over `cfg`'s lake until `stop`: `hexpulse alerts`, and inside `hexpulse
/// up`. Its `/healthz`, `/readyz` and `/metrics` are on `[query.alerts] listen`, when set.
pub async fn run(
    cfg: crate::QueryConfig,
    lake: hexpulse_lake::Lake,
    stop: CancellationToken,
) -> Result<(), String> {
    let health = Health::new();
    let mut tasks = hexpulse_common::tasks::Tasks::new(health.clone(), stop.clone());
    let alerts = Arc::new(open(&cfg, lake, health).await?);
    if let Some(addr) = cfg.alerts.listen {
        let app = hexpulse_common::health::side_router(tasks.health());
        let bound = hexpulse_common::http::serve_in_background(addr, app, "listener", &mut tasks)
            .await
            .map_err(|e| format!("binding {addr}: {e}"))?;
        tracing::info!(addr = %bound, "alerts: health and metrics listening");
    }
    tracing::info!(interval = ?cfg.alerts.interval, "alerts role started");
    tasks.spawn("alerts", alerts.run(stop));
    tasks.join().await;
    Ok(())
}

/// The alerts role's parts over `lake`.
pub async fn open(
    cfg: &crate::QueryConfig,
    lake: hexpulse_lake::Lake,
    health: Health,
) -> Result<Alerts, String> {
    let rules =
        hexpulse_lake::rules::Rules::load(cfg.rules_path.as_deref()).map_err(|e| e.to_string())?;
    let lateness_ms = rules.time.allowed_lateness.as_millis() as i64;
    let metrics = rules.ranges.keys().cloned().collect();
    let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_memory_limit(cfg.memory_limit_bytes, 1.0)
        .build_arc()
        .map_err(|e| e.to_string())?;
    let catalog =
        crate::catalog::Catalog::open(lake.clone(), runtime, cfg.max_expression_bytes, None)
            .await
            .map_err(|e| e.to_string())?;
    let sources = Sources {
        catalog,
        status: Arc::new(crate::status::StatusCache::new(
            cfg.status.clone(),
            lake.clone(),
            lateness_ms,
        )),
        pilots: crate::pilots::Pilots::new(lake.clone(), cfg.pilots.clone())?,
    };
    Alerts::new(
        Rules::new(lake, cfg.alerts.clone(), metrics),
        sources,
        health,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{Condition, Webhook};

    fn rule() -> Rule {
        Rule {
            id: "0123456789abcdef".into(),
            name: "r".into(),
            condition: Condition::DeviceOffline {
                devices: vec!["aa".repeat(32)],
                after: Duration::from_secs(60),
            },
            webhook: Webhook {
                url: "https://hooks.example.com/".into(),
                secret: "0123456789abcdef".into(),
            },
            created: String::new(),
            created_by: String::new(),
        }
    }

    fn firing(subject: &str, since_ms: i64) -> Firing {
        Firing {
            subject: subject.into(),
            since_ms,
            details: Value::Null,
        }
    }

    /// A subject fires once per firing: the next evaluations that still see it (or cannot tell)
    /// add nothing, one that does not see it ends the firing with one `resolved` event, and firing
    /// again makes a new event.
    #[test]
    fn a_firing_makes_one_event_and_its_end_another() {
        let r = rule();
        let mut s = RuleState::default();
        assert!(apply(&r, &mut s, vec![firing("a", 10)], &[], 100, 1000));
        assert!(!apply(&r, &mut s, vec![firing("a", 20)], &[], 100, 2000));
        assert!(!apply(&r, &mut s, vec![], &["a".into()], 100, 2500));
        assert_eq!(s.outbox.len(), 1);
        let fired = event_id(&r.id, "a", 10);
        assert_eq!(s.outbox[0].event_id, fired);
        assert_eq!(s.outbox[0].event["state"], "firing");

        assert!(apply(&r, &mut s, vec![], &[], 150, 3000));
        assert!(s.firing.is_empty());
        assert_eq!(s.outbox.len(), 2);
        let end = &s.outbox[1];
        assert_eq!(end.event_id, resolved_id(&fired));
        // schemas/ALERTS.md's example.
        assert_eq!(
            resolved_id("1770f0d80b0c2d2db4817ae386bd695f"),
            "fb74224655d7f2e34d8d469775de0908"
        );
        assert_ne!(end.event_id, fired);
        assert_eq!(end.event["event_id"], end.event_id);
        assert_eq!(end.event["state"], "resolved");
        assert_eq!(end.event["subject"], "a");
        assert_eq!(
            end.event["rule"],
            json!({"id": r.id, "name": "r", "kind": "device_offline"})
        );
        assert_eq!(end.event["rule"], s.outbox[0].event["rule"]);
        assert_eq!(end.event["firing_event_id"], fired);
        assert_eq!(end.event["since"], rfc3339(10));
        assert_eq!(end.event["fired_at"], rfc3339(1000));
        assert_eq!(end.event["resolved_at"], rfc3339(3000));
        assert_eq!(end.event["watermark"], rfc3339(150));
        assert_eq!(end.fired_at_ms, 3000);
        // Ended once: the next evaluation without it adds nothing.
        assert!(!apply(&r, &mut s, vec![], &[], 160, 3500));
        assert_eq!(s.outbox.len(), 2);

        assert!(apply(&r, &mut s, vec![firing("a", 30)], &[], 200, 4000));
        assert_eq!(s.outbox.len(), 3);
        let ids: std::collections::BTreeSet<_> = s.outbox.iter().map(|p| &p.event_id).collect();
        assert_eq!(ids.len(), 3, "three events, three ids");
    }

    fn pending(id: &str, fired_at_ms: i64) -> Pending {
        Pending {
            event: Value::Null,
            event_id: id.into(),
            fired_at_ms,
            attempts: 0,
            next_attempt_ms: 0,
            last_error: None,
        }
    }

    /// A receiver that fails (or hangs until the client's timeout) is tried once a round, whatever
    /// the number of due events: the first waits its backoff, the others are not tried. A later
    /// round sends the others in order, and the first once its backoff is over; an event older than
    /// `give_up_after` is dropped at its next failure.
    #[tokio::test]
    async fn a_failing_receiver_is_tried_once_a_round() {
        let cfg = AlertsConfig::default();
        let mut s = RuleState {
            outbox: (0..5).map(|i| pending(&format!("e{i}"), 1_000)).collect(),
            ..RuleState::default()
        };
        let tried = std::sync::Mutex::new(Vec::new());
        let down = |p: Pending| {
            tried.lock().unwrap().push(p.event_id);
            async { Err("the receiver did not answer within the timeout".to_string()) }
        };
        assert!(deliver_outbox("r", &cfg, &mut s, || 2_000, down).await);
        assert_eq!(*tried.lock().unwrap(), ["e0"]);
        assert_eq!(s.outbox.len(), 5);
        assert_eq!(s.outbox[0].attempts, 1);
        let retry_at = 2_000 + cfg.backoff_min.as_millis() as i64;
        assert_eq!(s.outbox[0].next_attempt_ms, retry_at);
        assert!(s.outbox[1..].iter().all(|p| p.attempts == 0));

        // Up again, before the first event's backoff is over: the other four go, in order.
        tried.lock().unwrap().clear();
        let up = |p: Pending| {
            tried.lock().unwrap().push(p.event_id);
            async { Ok(()) }
        };
        assert!(deliver_outbox("r", &cfg, &mut s, || retry_at - 1, up).await);
        assert_eq!(*tried.lock().unwrap(), ["e1", "e2", "e3", "e4"]);
        assert_eq!(s.outbox.len(), 1);
        // Nothing due: nothing tried, nothing changed.
        tried.lock().unwrap().clear();
        assert!(!deliver_outbox("r", &cfg, &mut s, || retry_at - 1, up).await);
        assert!(tried.lock().unwrap().is_empty());
        // Past give_up_after, a failure drops it.
        let late = 1_000 + cfg.give_up_after.as_millis() as i64;
        assert!(deliver_outbox("r", &cfg, &mut s, || late, down).await);
        assert!(s.outbox.is_empty());
    }

    #[test]
    fn signatures_and_backoff_are_as_documented() {
        // HMAC-SHA256("key", "1700000000.{}"), computed independently with
        // `printf '1700000000.{}' | openssl dgst -sha256 -hmac key`.
        assert_eq!(
            signature("key", 1_700_000_000, b"{}"),
            "sha256=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let waits: Vec<u64> = (1..=8).map(|a| backoff(min, max, a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(min, max, 1000), max);
    }
}
