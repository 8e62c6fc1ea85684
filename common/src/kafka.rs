//! Kafka client settings shared by every role, and topic creation.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};

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
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("reconnect.backoff.max.ms", "1000");
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }

    /// Durable producer: idempotent, acks=all, bounded retries by time (`delivery_timeout`).
    pub fn producer_config(&self, client_id: &str, delivery_timeout: Duration) -> ClientConfig {
        let mut c = self.client_config();
        c.set("client.id", client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("compression.type", "lz4")
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
    pub fn consumer_config(&self, group: &str, client_id: &str) -> ClientConfig {
        let mut c = self.client_config();
        c.set("group.id", group)
            .set("client.id", client_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed");
        c
    }

    /// Creates `topics` with the configured partitions and replication if they do not exist yet.
    pub async fn ensure_topics(&self, topics: &[&str]) -> Result<(), KafkaError> {
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
