//! Alerts (issue #25): rules that watch the lake and call a webhook when they fire.
//!
//! A rule is a name, a condition and a webhook (a URL and a secret):
//! - `device_offline`: listed devices whose newest heartbeat is older than `after`;
//! - `hex_metric`: hexes where a sensor metric stayed above a threshold for `for`;
//! - `pilot_coverage_drop`: a pilot's area whose covered share fell by `drop_percent` or more from
//!   one window to the next.
//!
//! Rules live next to the lake's tables, one JSON object each under `_alerts/rules/`, managed by the
//! query service's API (`/v1/alerts/rules`). The alerts role ([`run`]: `hexpulse alerts`, or inside
//! `hexpulse up`) evaluates them ([`eval`]) and delivers what fires ([`deliver`]): a signed POST,
//! retried with backoff until the receiver answers 2xx, de-duplicated by its event id, with the
//! firing state and the undelivered events stored under `_alerts/state/` so that a restart neither
//! forgets nor repeats. schemas/ALERTS.md is the receivers' contract.
//!
//! Webhook URLs are checked against `[query.alerts] webhook_schemes` and `webhook_hosts` when a
//! rule is created and again before each delivery, and redirects are not followed: a rule cannot
//! make the service call a host the operator did not allow (SSRF).

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use hexpulse_lake::Lake;

use crate::objects::{ObjectError, invalid};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub mod deliver;
pub mod eval;

pub use deliver::run;

/// Where rules are stored, under the lake root.
pub const RULES: &str = "_alerts/rules/";
/// Where each rule's firing state and undelivered events are stored.
pub const STATE: &str = "_alerts/state/";

/// `[query.alerts]`: the rules' bounds, the webhook allowlist, and the alerts role's timing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// The alerts role's `/healthz`, `/readyz` and `/metrics` when it runs alone (`hexpulse
    /// alerts`); none: no listener (inside `hexpulse up` the query service's `/metrics` has them).
    pub listen: Option<std::net::SocketAddr>,
    /// How often the alerts role evaluates every rule and retries due deliveries.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Rules stored at most; past it creating one is refused with 409 `too_many_rules`.
    pub max_rules: usize,
    /// Devices one `device_offline` rule may list, and cells one `hex_metric` rule may list.
    pub max_subjects: usize,
    /// URL schemes a webhook may use (`https`; add `http` only for receivers on a trusted network).
    pub webhook_schemes: Vec<String>,
    /// Hosts a webhook may call: a name or address as written in the URL, or `*.example.com` for
    /// its subdomains. Empty: no webhook is allowed until the operator lists its receivers.
    pub webhook_hosts: Vec<String>,
    /// How long one delivery may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The first retry's delay; each further retry waits twice as long, up to `backoff_max`.
    #[serde(with = "humantime_serde")]
    pub backoff_min: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// An event not delivered this long after it fired is dropped (counted and logged).
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8085))),
            interval: Duration::from_secs(15),
            max_rules: 1_000,
            max_subjects: 1_000,
            webhook_schemes: vec!["https".into()],
            webhook_hosts: Vec::new(),
            timeout: Duration::from_secs(10),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            give_up_after: Duration::from_secs(86_400),
        }
    }
}

impl AlertsConfig {
    /// Checks the settings.
    pub fn check(&self) -> Result<(), String> {
        if self.interval.is_zero() || self.timeout.is_zero() || self.backoff_min.is_zero() {
            return Err("[query.alerts] interval, timeout and backoff_min must be positive".into());
        }
        if self.backoff_max < self.backoff_min || self.give_up_after < self.backoff_max {
            return Err("[query.alerts] needs backoff_min <= backoff_max <= give_up_after".into());
        }
        if self.max_rules == 0 || self.max_subjects == 0 {
            return Err("[query.alerts] max_rules and max_subjects must be positive".into());
        }
        Ok(())
    }

    /// Why `url` may not be a webhook, if it may not.
    pub fn refuse_url(&self, url: &str) -> Option<String> {
        let Ok(u) = url::Url::parse(url) else {
            return Some(format!("webhook.url {url:?} is not an absolute URL"));
        };
        if !self.webhook_schemes.iter().any(|s| s == u.scheme()) {
            return Some(format!(
                "webhook.url: scheme {:?} is not allowed (webhook_schemes: {:?})",
                u.scheme(),
                self.webhook_schemes
            ));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Some("webhook.url: credentials in the URL are not allowed".into());
        }
        let Some(host) = u.host_str() else {
            return Some("webhook.url names no host".into());
        };
        let host = host.to_ascii_lowercase();
        let allowed = self.webhook_hosts.iter().any(|h| {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix("*.") {
                Some(domain) => host
                    .strip_suffix(domain)
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => host == h,
            }
        });
        if !allowed {
            return Some(format!(
                "webhook.url: host {host:?} is not allowed (webhook_hosts: {:?})",
                self.webhook_hosts
            ));
        }
        None
    }
}

/// What a rule watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// Each listed device (64 hexadecimal digits) fires while its newest heartbeat was received
    /// more than `after` before the lake's watermark.
    DeviceOffline {
        devices: Vec<String>,
        #[serde(with = "humantime_serde")]
        after: Duration,
    },
    /// Each hex (at `resolution`, of the listed `cells` or of all) fires while its readings of
    /// `metric` have stayed above `above` for at least `for`: the readings above it since the last
    /// one at or below it span `for`.
    HexMetric {
        metric: String,
        above: f64,
        #[serde(rename = "for", with = "humantime_serde")]
        duration: Duration,
        #[serde(default = "default_resolution")]
        resolution: u8,
        #[serde(default)]
        cells: Option<Vec<String>>,
    },
    /// The pilot fires while the share of its cells with a heartbeat in the last `window` (up to
    /// the watermark) is at least `drop_percent` below the share in the window before it.
    PilotCoverageDrop {
        pilot: String,
        drop_percent: f64,
        #[serde(with = "humantime_serde", default = "default_window")]
        window: Duration,
    },
}

fn default_resolution() -> u8 {
    8
}

fn default_window() -> Duration {
    Duration::from_secs(3600)
}

impl Condition {
    pub fn kind(&self) -> &'static str {
        match self {
            Condition::DeviceOffline { .. } => "device_offline",
            Condition::HexMetric { .. } => "hex_metric",
            Condition::PilotCoverageDrop { .. } => "pilot_coverage_drop",
        }
    }
}

/// Where a rule's events go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub url: String,
    /// The HMAC-SHA256 key of the signature header (at least 16 characters). Never answered back.
    pub secret: String,
}

/// A rule as `POST /v1/alerts/rules` takes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRule {
    pub name: String,
    pub condition: Condition,
    pub webhook: Webhook,
}

/// A stored rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    pub name: String,
    pub condition: Condition,
    pub webhook: Webhook,
    pub created: String,
    pub created_by: String,
}

impl Rule {
    /// The rule as the API shows it: everything but the webhook's secret.
    pub fn public(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "condition": self.condition,
            "webhook": {"url": self.webhook.url},
            "created": self.created,
            "created_by": self.created_by,
        })
    }
}

/// Why a rule was refused (`bad_rule`, `unknown_metric`, `webhook_not_allowed`, `unknown_pilot`,
/// `too_many_rules`) or could not be stored.
pub type RuleError = ObjectError;

fn bad(message: impl Into<String>) -> RuleError {
    invalid("bad_rule", message)
}

/// The longest `for`, `after` and `window`: a rule reads at most twice as much of the lake.
const MAX_SPAN: Duration = Duration::from_secs(7 * 86_400);
/// The shortest: below a minute the watermark's own steps decide.
const MIN_SPAN: Duration = Duration::from_secs(60);

/// The rule store and its checks.
pub struct Rules {
    store: crate::objects::Objects,
    cfg: AlertsConfig,
    /// The sensor metrics (the validation rules' `[ranges]`).
    metrics: BTreeSet<String>,
}

impl Rules {
    pub fn new(lake: Lake, cfg: AlertsConfig, metrics: BTreeSet<String>) -> Rules {
        Rules {
            store: crate::objects::Objects::new(lake, RULES),
            cfg,
            metrics,
        }
    }

    pub fn config(&self) -> &AlertsConfig {
        &self.cfg
    }

    /// Checks `new` and stores it. `pilot_exists` answers whether a pilot id is stored.
    pub async fn create(
        &self,
        new: NewRule,
        created_by: &str,
        now_ms: i64,
        pilots: &crate::pilots::Pilots,
    ) -> Result<Rule, RuleError> {
        self.check(&new)?;
        if let Condition::PilotCoverageDrop { pilot, .. } = &new.condition
            && pilots
                .get(pilot)
                .await
                .map_err(|e| bad(e.to_string()))?
                .is_none()
        {
            return Err(invalid(
                "unknown_pilot",
                format!("condition.pilot: no pilot {pilot:?} (GET /v1/pilots lists them)"),
            ));
        }
        let stored = self.store.count().await?;
        if stored >= self.cfg.max_rules {
            return Err(ObjectError::Full {
                code: "too_many_rules",
                message: format!(
                    "{stored} rules are stored, the most this service keeps (max_rules)"
                ),
            });
        }
        let rule = Rule {
            id: rule_id(&new, now_ms),
            name: new.name.trim().to_string(),
            condition: new.condition,
            webhook: new.webhook,
            created: crate::params::rfc3339(now_ms),
            created_by: created_by.to_string(),
        };
        if !self.store.create(&rule.id, &rule).await? {
            return Err(bad(format!("rule {} exists already", rule.id)));
        }
        Ok(rule)
    }

    /// The checks that need no store.
    fn check(&self, new: &NewRule) -> Result<(), RuleError> {
        let name = new.name.trim();
        if name.is_empty() || name.chars().count() > 120 || name.chars().any(char::is_control) {
            return Err(bad("name: 1 to 120 characters, no control characters"));
        }
        if let Some(why) = self.cfg.refuse_url(&new.webhook.url) {
            return Err(invalid("webhook_not_allowed", why));
        }
        let secret = &new.webhook.secret;
        if secret.len() < 16 || secret.len() > 256 {
            return Err(bad("webhook.secret: 16 to 256 bytes"));
        }
        let span = |field: &str, d: &Duration| {
            if *d < MIN_SPAN || *d > MAX_SPAN {
                Err(bad(format!("condition.{field}: from 1m to 7days")))
            } else {
                Ok(())
            }
        };
        let max = self.cfg.max_subjects;
        match &new.condition {
            Condition::DeviceOffline { devices, after } => {
                span("after", after)?;
                if devices.is_empty() || devices.len() > max {
                    return Err(bad(format!("condition.devices: 1 to {max} device keys")));
                }
                if let Some(d) = devices
                    .iter()
                    .find(|d| crate::status::parse_key(d).is_none())
                {
                    return Err(bad(format!(
                        "condition.devices: {d:?} is not a device key (64 hexadecimal digits)"
                    )));
                }
            }
            Condition::HexMetric {
                metric,
                above,
                duration,
                resolution,
                cells,
            } => {
                span("for", duration)?;
                if !self.metrics.contains(metric) {
                    return Err(invalid(
                        "unknown_metric",
                        format!(
                            "condition.metric: unknown metric {metric:?} (known: {})",
                            self.metrics.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                if !above.is_finite() {
                    return Err(bad("condition.above: a finite number"));
                }
                let res = h3o::Resolution::try_from(*resolution)
                    .map_err(|_| bad("condition.resolution: 0 to 15"))?;
                if let Some(cells) = cells {
                    if cells.is_empty() || cells.len() > max {
                        return Err(bad(format!("condition.cells: 1 to {max} H3 cells")));
                    }
                    for c in cells {
                        match h3o::CellIndex::from_str(c) {
                            Ok(cell) if cell.resolution() == res => {}
                            _ => {
                                return Err(bad(format!(
                                    "condition.cells: {c:?} is not an H3 cell at resolution {resolution}"
                                )));
                            }
                        }
                    }
                }
            }
            Condition::PilotCoverageDrop {
                pilot,
                drop_percent,
                window,
            } => {
                span("window", window)?;
                if !crate::pilots::valid_id(pilot) {
                    return Err(invalid(
                        "unknown_pilot",
                        format!("condition.pilot: {pilot:?} is not a pilot id"),
                    ));
                }
                if !(drop_percent.is_finite() && *drop_percent > 0.0 && *drop_percent <= 100.0) {
                    return Err(bad("condition.drop_percent: more than 0, at most 100"));
                }
            }
        }
        Ok(())
    }

    /// Every stored rule, oldest first.
    pub async fn list(&self) -> Result<Vec<Rule>, RuleError> {
        let mut out: Vec<Rule> = self.store.list().await?;
        out.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
        Ok(out)
    }

    /// One rule, if stored.
    pub async fn get(&self, id: &str) -> Result<Option<Rule>, RuleError> {
        Ok(self.store.get(id).await?)
    }

    /// Deletes a rule and its state; whether there was one.
    pub async fn delete(&self, id: &str) -> Result<bool, RuleError> {
        if !self.store.delete(id).await? {
            return Ok(false);
        }
        self.store.lake().delete(&state_path(id)).await?;
        Ok(true)
    }
}

pub(crate) fn state_path(id: &str) -> String {
    format!("{STATE}{id}.json")
}

/// A rule's id: a digest of what it is and when it was made (16 hexadecimal digits).
fn rule_id(new: &NewRule, now_ms: i64) -> String {
    let mut h = Sha256::new();
    h.update(new.name.as_bytes());
    h.update(serde_json::to_vec(&new.condition).unwrap_or_default());
    h.update(new.webhook.url.as_bytes());
    h.update(now_ms.to_le_bytes());
    hex::encode(&h.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AlertsConfig {
        AlertsConfig {
            webhook_schemes: vec!["https".into()],
            webhook_hosts: vec!["hooks.example.com".into(), "*.example.org".into()],
            ..AlertsConfig::default()
        }
    }

    #[test]
    fn webhook_urls_pass_only_the_allowlist() {
        let c = cfg();
        for ok in [
            "https://hooks.example.com/a",
            "https://HOOKS.example.com:8443/x?y=1",
            "https://a.example.org/",
            "https://a.b.example.org/",
        ] {
            assert_eq!(c.refuse_url(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("http://hooks.example.com/", "scheme"),
            ("file:///etc/passwd", "scheme"),
            ("https://example.org/", "host"),
            ("https://evilexample.org/", "host"),
            ("https://hooks.example.com.evil.net/", "host"),
            ("https://169.254.169.254/latest/meta-data", "host"),
            ("https://u:p@hooks.example.com/", "credentials"),
            ("hooks.example.com/x", "absolute"),
        ] {
            let got = c.refuse_url(bad).unwrap_or_default();
            assert!(got.contains(why), "{bad}: {got:?}");
        }
    }

    #[test]
    fn conditions_read_their_documented_json() {
        let c: Condition = serde_json::from_value(json!({
            "kind": "hex_metric", "metric": "pm2_5", "above": 35, "for": "1h"
        }))
        .unwrap();
        assert_eq!(
            c,
            Condition::HexMetric {
                metric: "pm2_5".into(),
                above: 35.0,
                duration: Duration::from_secs(3600),
                resolution: 8,
                cells: None,
            }
        );
        let err = serde_json::from_value::<Condition>(json!({
            "kind": "device_offline", "devices": [], "after": "5m", "extra": 1
        }))
        .unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }
}
