//! The whole config file: one section per role, loaded by layers (see `config/hexpulse.toml`).

use std::path::{Path, PathBuf};

use hexpulse_common::kafka::KafkaConfig;
use hexpulse_ingest::{IngestConfig, MqttConfig};
use hexpulse_load_tests::sim::SimConfig;
use hexpulse_processors::ProcessConfig;
use serde::{Deserialize, Serialize};

/// The embedded defaults, which are also the commented example file.
pub const DEFAULTS: &str = include_str!("../../config/hexpulse.toml");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub registry: RegistryConfig,
    pub ingest: IngestConfig,
    /// The MQTT bridge (`hexpulse mqtt`); its defaults apply where the section is absent.
    #[serde(default)]
    pub mqtt: MqttConfig,
    pub process: ProcessConfig,
    pub query: hexpulse_query::QueryConfig,
    pub simulate: SimConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    pub path: PathBuf,
}

impl Config {
    /// The embedded defaults, then `files` in order (later wins), then the env.
    pub fn load<P: AsRef<Path>>(
        files: &[P],
    ) -> Result<Config, hexpulse_common::config::ConfigError> {
        hexpulse_common::config::load(DEFAULTS, files)
    }

    /// The effective config as TOML-like JSON with secrets blanked, for the start-up log.
    pub fn redacted(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        if let Some(extra) = v
            .pointer_mut("/kafka/extra")
            .and_then(|e| e.as_object_mut())
        {
            for (k, val) in extra.iter_mut() {
                // librdkafka's secret-bearing properties: passwords, keys and keytabs, client
                // secrets, and whole credential configs (OAUTHBEARER, JAAS).
                if [
                    "password",
                    "secret",
                    "token",
                    "key",
                    "oauthbearer",
                    "jaas",
                    "credential",
                ]
                .iter()
                .any(|s| k.to_ascii_lowercase().contains(s))
                {
                    *val = "<redacted>".into();
                }
            }
        }
        for secret in [
            "/kafka/envelope_key",
            "/kafka/sasl_password",
            "/mqtt/password",
        ] {
            if let Some(k) = v.pointer_mut(secret) {
                *k = "<redacted>".into();
            }
        }
        // Token digests too: an unsalted SHA-256 of a weak token is easy to reverse.
        if let Some(t) = v.pointer_mut("/ingest/admin_token_sha256")
            && t.as_str().is_some_and(|s| !s.is_empty())
        {
            *t = "<redacted>".into();
        }
        if let Some(tokens) = v
            .pointer_mut("/query/auth/tokens")
            .and_then(|t| t.as_array_mut())
        {
            for t in tokens {
                if let Some(d) = t.get_mut("sha256") {
                    *d = "<redacted>".into();
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_loads_as_defaults_and_as_a_file() {
        let defaults = Config::load::<&Path>(&[]).expect("embedded defaults parse");
        assert_eq!(defaults.kafka.raw_topic, "raw-readings");
        let path = hexpulse_testkit::testenv::repo_root().join("config/hexpulse.toml");
        let from_file = Config::load(&[&path]).expect("example file parses");
        assert_eq!(from_file.ingest.listen, defaults.ingest.listen);
    }

    #[test]
    fn demo_overrides_layer_over_the_defaults() {
        let path = hexpulse_testkit::testenv::repo_root().join("config/demo.toml");
        let demo = Config::load(&[&path]).expect("demo file parses");
        assert_eq!(
            demo.process.epoch.length,
            std::time::Duration::from_secs(120)
        );
        assert_eq!(
            demo.kafka.raw_topic, "raw-readings",
            "the rest stays default"
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let mut c = Config::load::<&Path>(&[]).unwrap();
        c.kafka
            .extra
            .insert("sasl.password".into(), "hunter2".into());
        c.kafka.extra.insert(
            "sasl.oauthbearer.config".into(),
            "clientSecret=oauth-s3cret".into(),
        );
        c.kafka
            .extra
            .insert("ssl.keystore.location".into(), "/keystore-path".into());
        c.kafka.envelope_key = Some("5a".repeat(32));
        c.kafka.sasl_password = Some("scram-pw".into());
        c.mqtt.password = Some("mqtt-pw".into());
        c.ingest.admin_token_sha256 = "ab".into();
        c.query
            .auth
            .tokens
            .push(hexpulse_query::config::TokenConfig {
                name: "city".into(),
                role: "planner".into(),
                sha256: "cd".repeat(32),
            });
        let text = c.redacted().to_string();
        assert!(text.contains("\"city\""), "token names stay: {text}");
        for secret in [
            "hunter2",
            "\"ab\"",
            &"cd".repeat(32),
            "oauth-s3cret",
            "/keystore-path",
            &"5a".repeat(32),
            "scram-pw",
            "mqtt-pw",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}
