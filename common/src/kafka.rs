//! Kafka client settings shared by every role, and topic creation.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};

/// The consumers' `fetch.wait.max.ms` unless `[kafka.extra]` sets it
/// ([`KafkaConfig::consumer_config`]).
pub const FETCH_WAIT_MAX_MS: &str = "50";

/// The producers' defaults that `[kafka.extra]` may override ([`KafkaConfig::producer_config`]):
/// batching for 2 ms, and lz4 (the log's bytes to about 0.70 of the records', k8s/README.md).
pub const PRODUCER_DEFAULTS: [(&str, &str); 2] = [("linger.ms", "2"), ("compression.type", "lz4")];

/// The `[kafka]` section of every role's config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Topic of raw signed readings.
    pub raw_topic: String,
    /// Partitions of topics created on start.
    pub partitions: i32,
    /// Replication factor of topics created on start.
    pub replication: i32,
    /// Extra librdkafka properties, passed through as-is (e.g. `security.protocol`).
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
    /// A secret shared by ingest and the processors (64 hex digits). Ingest tags every record's
    /// envelope with it; processors that re-verify signatures then accept only tagged records
    /// (schemas/WIRE.md, "Raw topic records"). Unset: envelopes are untagged, and their receive
    /// times are trusted as they are. Set it from the environment
    /// (`HEXPULSE__KAFKA__ENVELOPE_KEY`), not in a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope_key: Option<String>,
    /// The role's Kafka user (SASL/SCRAM-SHA-512, as Strimzi's `KafkaUser`s): with it, clients
    /// connect with `security.protocol` SASL_PLAINTEXT (or what `extra` says, e.g. SASL_SSL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_username: Option<String>,
    /// That user's password. Set it from the environment (`HEXPULSE__KAFKA__SASL_PASSWORD`, in
    /// Kubernetes from the user's Secret), not in a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_password: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("creating topic {topic}: {code}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

impl KafkaConfig {
    /// The parsed `envelope_key`, if set.
    pub fn envelope_key(
        &self,
    ) -> Result<Option<hexpulse_schemas::wire::envelope::EnvelopeKey>, String> {
        self.envelope_key
            .as_deref()
            .filter(|k| !k.trim().is_empty())
            .map(hexpulse_schemas::wire::envelope::EnvelopeKey::from_hex)
            .transpose()
    }

    /// Base client config: brokers plus the pass-through properties. Reconnect attempts back off
    /// to at most one a second (librdkafka's default is 10 s), so a role notices a restarted
    /// broker within about a second.
    ///
    /// With `sasl_username`, the client authenticates as that user (SCRAM-SHA-512 over
    /// SASL_PLAINTEXT unless `extra` names another mechanism or protocol).
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("reconnect.backoff.max.ms", "1000");
        if let Some(user) = self.sasl_username.as_deref().filter(|u| !u.is_empty()) {
            c.set("security.protocol", "SASL_PLAINTEXT")
                .set("sasl.mechanisms", "SCRAM-SHA-512")
                .set("sasl.username", user)
                .set(
                    "sasl.password",
                    self.sasl_password.as_deref().unwrap_or_default(),
                );
        }
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }

    /// Sets `key` to `value` unless `extra` names it: a default, where a plain `set` after
    /// [`Self::client_config`] pins a property against `extra`.
    fn default_unless_extra(&self, c: &mut ClientConfig, key: &str, value: &str) {
        if !self.extra.contains_key(key) {
            c.set(key, value);
        }
    }

    /// Durable producer: idempotent, acks=all, bounded retries by time (`delivery_timeout`).
    /// [`PRODUCER_DEFAULTS`] apply unless `extra` sets them (e.g. `compression.type = "none"`
    /// where CPU is dearer than the brokers' disks); the durability settings and the partitioner
    /// are pinned.
    pub fn producer_config(&self, client_id: &str, delivery_timeout: Duration) -> ClientConfig {
        let mut c = self.client_config();
        for (key, value) in PRODUCER_DEFAULTS {
            self.default_unless_extra(&mut c, key, value);
        }
        c.set("client.id", client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Pinned (not left to `extra`): processors that re-verify signatures check that each
            // record sits in its key's partition under this rule (`wire::partition_of`).
            .set("partitioner", "consistent_random")
            .set(
                "message.timeout.ms",
                delivery_timeout.as_millis().to_string(),
            );
        c
    }

    /// Consumer in `group`, manual offset commits, reading from the earliest offset when none is committed.
    ///
    /// Fetches wait at most [`FETCH_WAIT_MAX_MS`] unless `extra` sets `fetch.wait.max.ms`: tansu
    /// 0.6 sleeps half the fetch's wait after every read, records or not, so librdkafka's 500 ms
    /// default holds each fetch (and so each record) for 250 ms there. Kafka answers a fetch as
    /// soon as it has records; there the shorter wait only adds empty fetches while idle.
    pub fn consumer_config(&self, group: &str, client_id: &str) -> ClientConfig {
        let mut c = self.client_config();
        self.default_unless_extra(&mut c, "fetch.wait.max.ms", FETCH_WAIT_MAX_MS);
        c.set("group.id", group)
            .set("client.id", client_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed");
        c
    }

    /// Creates `topics` with the configured partitions and replication if they do not exist yet.
    /// Topics the broker's metadata lists already are not asked for again: every starting process
    /// calls this, and a create of an existing topic is a failed write transaction on tansu's
    /// sqlite engine, which had no business running beside the producers' writes.
    pub async fn ensure_topics(&self, topics: &[&str]) -> Result<(), KafkaError> {
        let config = self.client_config();
        let existing = tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::Consumer as _;
            let client: rdkafka::consumer::BaseConsumer = config.create().ok()?;
            let metadata = client.fetch_metadata(None, Duration::from_secs(10)).ok()?;
            Some(
                metadata
                    .topics()
                    .iter()
                    .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                    .map(|t| t.name().to_string())
                    .collect::<std::collections::BTreeSet<_>>(),
            )
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
        let topics: Vec<&str> = topics
            .iter()
            .copied()
            .filter(|t| !existing.contains(*t))
            .collect();
        if topics.is_empty() {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self.client_config().create()?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    self.partitions,
                    TopicReplication::Fixed(self.replication),
                )
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics(&new, &opts).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(KafkaError::CreateTopic { topic, code }),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> KafkaConfig {
        KafkaConfig {
            brokers: "b:9092".into(),
            raw_topic: "raw".into(),
            partitions: 3,
            replication: 1,
            extra: BTreeMap::new(),
            envelope_key: None,
            sasl_username: None,
            sasl_password: None,
        }
    }

    #[test]
    fn a_kafka_user_authenticates_with_scram() {
        let plain = cfg().client_config();
        assert_eq!(plain.get("security.protocol"), None);
        let mut c = cfg();
        c.sasl_username = Some("hexpulse-ingest".into());
        c.sasl_password = Some("pw".into());
        let sasl = c.producer_config("x", Duration::from_secs(1));
        assert_eq!(sasl.get("security.protocol"), Some("SASL_PLAINTEXT"));
        assert_eq!(sasl.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(sasl.get("sasl.username"), Some("hexpulse-ingest"));
        assert_eq!(sasl.get("sasl.password"), Some("pw"));
        assert_eq!(sasl.get("partitioner"), Some("consistent_random"));
        // `extra` can name TLS (and cannot change the pinned partitioner).
        c.extra
            .insert("security.protocol".into(), "SASL_SSL".into());
        c.extra.insert("partitioner".into(), "murmur2".into());
        let tls = c.producer_config("x", Duration::from_secs(1));
        assert_eq!(tls.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(tls.get("partitioner"), Some("consistent_random"));
    }

    #[test]
    fn extra_overrides_the_producers_defaults_but_not_its_durability() {
        let mut c = cfg();
        let plain = c.producer_config("x", Duration::from_secs(1));
        for (key, value) in PRODUCER_DEFAULTS {
            assert_eq!(plain.get(key), Some(value), "{key}");
        }
        c.extra.insert("compression.type".into(), "none".into());
        c.extra.insert("linger.ms".into(), "20".into());
        c.extra.insert("acks".into(), "1".into());
        c.extra.insert("enable.idempotence".into(), "false".into());
        let tuned = c.producer_config("x", Duration::from_secs(1));
        assert_eq!(tuned.get("compression.type"), Some("none"));
        assert_eq!(tuned.get("linger.ms"), Some("20"));
        assert_eq!(tuned.get("acks"), Some("all"));
        assert_eq!(tuned.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn consumers_wait_briefly_unless_told_otherwise() {
        let mut c = cfg();
        let short = c.consumer_config("g", "x");
        assert_eq!(short.get("fetch.wait.max.ms"), Some(FETCH_WAIT_MAX_MS));
        c.extra.insert("fetch.wait.max.ms".into(), "500".into());
        assert_eq!(
            c.consumer_config("g", "x").get("fetch.wait.max.ms"),
            Some("500")
        );
    }
}
