//! The MQTT door: `hexpulse mqtt` bridges an MQTT broker's device topics into Kafka through
//! [`Ingest::submit`], with the checks and limits of the other doors.
//!
//! - It subscribes with QoS 1 on a persistent session (clean start off, a session expiry), as a
//!   shared subscription (`$share/{group}/{topic}`) when a group is set, so several bridges share
//!   the messages.
//! - A message is acknowledged (PUBACK, manual acks) only once it is settled: its accepted readings
//!   acknowledged by Kafka, or the message refused for good (undecodable, unknown devices). While
//!   Kafka is unreachable or ingest is overloaded, a message is retried with backoff and not
//!   acknowledged, so a bridge that dies loses nothing: the broker delivers the message again, and
//!   the processors reject what had landed already as `duplicate`.
//! - Acknowledgements go out in the order the messages came (MQTT's rule for QoS 1), while up to
//!   `inflight` messages are checked and produced at once.
//! - Each message's verdict is published (QoS 1) to its response topic (MQTT 5) or to
//!   `answers_topic` with the device of the message's topic.

use std::sync::atomic::{AtomicU64, Ordering};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, PublishProperties, RetainForwardRule};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

use super::*;
use crate::config::MqttConfig;

/// Messages bridged, by outcome: `accepted` (some reading accepted), `rejected` (none accepted:
/// each item's reason in the verdict), `refused` (the message as a whole).
const MESSAGES: &str = "hexpulse_mqtt_messages_total";
/// Attempts of a message that Kafka or the budget could not take yet (retried, not acknowledged).
const RETRIES: &str = "hexpulse_mqtt_retries_total";
const CONNECTED: &str = "hexpulse_mqtt_connected";

/// A running bridge.
pub struct Bridge {
    /// The health and metrics listener's address.
    pub addr: SocketAddr,
    pub tasks: Tasks,
}

impl Bridge {
    /// Awaits the bridge and its background tasks.
    pub async fn wait(self) {
        self.tasks.join().await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("mqtt.broker {0:?}: expected host:port")]
    Broker(String),
}

/// Starts the bridge: the ingest node ([`Ingest::build`]), its health listener, and the MQTT
/// session. Runs until `shutdown`.
pub async fn start(
    cfg: IngestConfig,
    mqtt: MqttConfig,
    kafka: KafkaConfig,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<Bridge, BridgeError> {
    let (host, port) = hexpulse_common::config::host_port(&mqtt.broker)
        .ok_or_else(|| BridgeError::Broker(mqtt.broker.clone()))?;
    let (state, mut tasks) = Ingest::build(cfg, &kafka, registry, shutdown.clone()).await?;
    let health = state.health.clone();
    health.fail("mqtt", "not connected to the MQTT broker yet");
    let routes = hexpulse_common::health::side_router(&health);
    let addr =
        hexpulse_common::http::serve_in_background(mqtt.listen, routes, "health", &mut tasks)
            .await
            .map_err(|source| StartError::Bind {
                addr: mqtt.listen,
                source,
            })?;
    let mut options = MqttOptions::new(mqtt.client_id.clone(), host, port);
    options
        .set_keep_alive(mqtt.keep_alive)
        .set_clean_start(false)
        .set_session_expiry_interval(Some(
            u32::try_from(mqtt.session_expiry.as_secs()).unwrap_or(u32::MAX),
        ))
        .set_receive_maximum(Some(mqtt.inflight.max(1)))
        .set_manual_acks(true)
        // Told to the broker in CONNECT: an MQTT 5 broker does not deliver a larger message to
        // the bridge at all. One between `max_body_bytes` and this gets a body_too_large verdict.
        .set_max_packet_size(Some(
            u32::try_from(state.cfg.max_body_bytes + 64 * 1024).unwrap_or(u32::MAX),
        ));
    if let (Some(user), Some(password)) = (&mqtt.username, &mqtt.password) {
        options.set_credentials(user, password);
    }
    let (client, events) = AsyncClient::new(options, usize::from(mqtt.inflight.max(1)) * 2);
    tracing::info!(broker = %mqtt.broker, topic = %mqtt.topic, group = %mqtt.share_group, %addr, "mqtt bridge starting");
    tasks.spawn(
        "mqtt-session",
        session(state, mqtt, client, events, health, shutdown),
    );
    Ok(Bridge { addr, tasks })
}

/// The MQTT session: polls the connection (rumqttc reconnects on the next poll after an error),
/// subscribes on every connection, and hands each message to a
/// task of its own; acknowledgements follow in arrival order.
async fn session(
    state: Arc<Ingest>,
    mqtt: MqttConfig,
    client: AsyncClient,
    mut events: rumqttc::v5::EventLoop,
    health: Health,
    shutdown: CancellationToken,
) {
    let filter = if mqtt.share_group.is_empty() {
        mqtt.topic.clone()
    } else {
        format!("$share/{}/{}", mqtt.share_group, mqtt.topic)
    };
    // Each message's task, in arrival order; the acknowledger awaits them in that order. Nothing
    // in this loop may wait on the connection's progress, which only this loop's polling makes:
    // the channel is unbounded (the broker sends at most `inflight` unacknowledged messages, the
    // receive maximum, so it stays that small), and subscribing runs in a task of its own.
    let (order_tx, order_rx) = tokio::sync::mpsc::unbounded_channel::<InHand>();
    // Counts the connections lost: a message's acknowledgement is for the connection it came on.
    let lost = Arc::new(AtomicU64::new(0));
    let acks = tokio::spawn(acknowledge(client.clone(), order_rx, lost.clone()));
    let mqtt = Arc::new(mqtt);
    let mut backoff = Duration::from_millis(200);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            event = events.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(200);
                health.clear("mqtt");
                metrics::gauge!(CONNECTED).set(1.0);
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to the MQTT broker"
                );
                // Subscribed again even on a session the broker kept: Mosquitto 2.0 keeps a
                // persistent session's plain subscriptions over its restart but not its shared
                // ones. Retained messages come only with a new subscription.
                let (client, mut filter) = (
                    client.clone(),
                    Filter::new(filter.clone(), QoS::AtLeastOnce),
                );
                filter.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
                tokio::spawn(async move {
                    if let Err(e) = client.subscribe_many([filter]).await {
                        tracing::warn!(error = %e, "subscribing");
                    }
                });
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let task = tokio::spawn(bridge_one(
                    state.clone(),
                    mqtt.clone(),
                    client.clone(),
                    publish.clone(),
                    shutdown.clone(),
                ));
                let in_hand = InHand {
                    publish,
                    task,
                    connection: lost.load(Ordering::SeqCst),
                };
                if order_tx.send(in_hand).is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                lost.fetch_add(1, Ordering::SeqCst);
                metrics::gauge!(CONNECTED).set(0.0);
                health.fail("mqtt", format!("the MQTT broker: {e}"));
                tracing::warn!(error = %e, retry_in = ?backoff, "MQTT connection lost; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    // Messages in hand are finished and acknowledged while the connection is still polled; then
    // the bridge disconnects (its session stays with the broker for the next start).
    drop(order_tx);
    let drain = async {
        let _ = acks.await;
        let _ = client.disconnect().await;
    };
    let polled = async {
        loop {
            if events.poll().await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = drain => {}
        _ = polled => {}
        _ = tokio::time::sleep(state.cfg.shutdown_timeout) => {
            tracing::warn!("messages still in hand at the shutdown limit; the broker delivers them again");
        }
    }
    state.flush(Duration::from_secs(2)).await;
    tracing::info!("mqtt bridge stopped");
}

/// A message being bridged: its task, and the connection it came on.
struct InHand {
    publish: Publish,
    task: tokio::task::JoinHandle<bool>,
    /// Connections lost before it came.
    connection: u64,
}

/// Acknowledges each message once its task settled it, in arrival order. A task that did not
/// settle (shutdown before Kafka took it) leaves its message unacknowledged for redelivery.
///
/// A message from a connection since lost is not acknowledged: the broker delivers it again on
/// the next one, and that copy is acknowledged in its turn. Acknowledging both would free the
/// packet id twice, and the second PUBACK could settle whichever new message the broker had given
/// that id meanwhile, before its readings were in Kafka. (One sent in the instant of a loss can
/// still reach the next connection: rumqttc queues it.)
async fn acknowledge(
    client: AsyncClient,
    mut order: tokio::sync::mpsc::UnboundedReceiver<InHand>,
    lost: Arc<AtomicU64>,
) {
    while let Some(m) = order.recv().await {
        let settled = matches!(m.task.await, Ok(true));
        if settled
            && m.connection == lost.load(Ordering::SeqCst)
            && let Err(e) = client.ack(&m.publish).await
        {
            tracing::warn!(error = %e, "acknowledging a message");
        }
    }
}

/// Bridges one message: decoded as a batch, submitted until settled, its verdict published.
/// Whether the message is settled and may be acknowledged: not when shutdown came first.
async fn bridge_one(
    state: Arc<Ingest>,
    mqtt: Arc<MqttConfig>,
    client: AsyncClient,
    publish: Publish,
    shutdown: CancellationToken,
) -> bool {
    let received_ms = now_ms();
    let verdict = match as_batch(&publish.payload, state.cfg.max_body_bytes) {
        Err(r) => Err(r),
        Ok((raw, format)) => {
            let mut wait = Duration::from_millis(100);
            loop {
                let permit = match state.reserve(raw.len()) {
                    Ok(p) => p,
                    Err(r) => {
                        if !retry_later(&r, &mut wait, &shutdown).await {
                            return false;
                        }
                        continue;
                    }
                };
                let batch = Batch {
                    raw: raw.clone(),
                    permit,
                    encoding: None,
                    format,
                    source: None,
                    received_ms,
                };
                match state.submit(batch).await {
                    Err(r) if settles_later(&r) => {
                        if !retry_later(&r, &mut wait, &shutdown).await {
                            return false;
                        }
                    }
                    done => break done,
                }
            }
        }
    };
    let (outcome, body) = match &verdict {
        Ok(answer) => (
            if answer.accepted > 0 {
                "accepted"
            } else {
                "rejected"
            },
            json!({"accepted": answer.accepted, "rejected": answer.rejected.iter().map(|r| json!({"index": r.index, "code": r.code, "message": r.message})).collect::<Vec<_>>()}),
        ),
        Err(r) => {
            let mut body = error_body(r.code(), &r.message(), None);
            body["accepted"] = 0.into();
            body["rejected"] = r
                .rejected()
                .iter()
                .map(|r| json!({"index": r.index, "code": r.code, "message": r.message}))
                .collect();
            ("refused", body)
        }
    };
    metrics::counter!(MESSAGES, "outcome" => outcome).increment(1);
    answer(&mqtt, &client, &publish, body).await;
    true
}

/// Refusals that a later attempt may get past: the message is kept (not acknowledged) and retried.
fn settles_later(r: &Refusal) -> bool {
    matches!(
        r,
        Refusal::BrokerUnavailable(_) | Refusal::Overloaded(_) | Refusal::Internal(_)
    )
}

/// Waits before the next attempt (doubling up to 5 s). False at shutdown: the message stays
/// unacknowledged, so that the broker delivers it again.
async fn retry_later(r: &Refusal, wait: &mut Duration, shutdown: &CancellationToken) -> bool {
    metrics::counter!(RETRIES, "code" => r.code()).increment(1);
    tracing::debug!(code = r.code(), ?wait, "message not settled; retrying");
    tokio::select! {
        _ = shutdown.cancelled() => return false,
        _ = tokio::time::sleep(*wait) => {}
    }
    *wait = (*wait * 2).min(Duration::from_secs(5));
    true
}

/// Publishes a message's verdict (QoS 1) to its response topic, else to `answers_topic`.
async fn answer(
    mqtt: &MqttConfig,
    client: &AsyncClient,
    publish: &Publish,
    body: serde_json::Value,
) {
    let props = publish.properties.as_ref();
    let topic = match props.and_then(|p| p.response_topic.clone()) {
        Some(t) => t,
        None if mqtt.answers_topic.is_empty() => return,
        None => {
            let topic = String::from_utf8_lossy(&publish.topic);
            let device = topic.rsplit('/').next().unwrap_or_default();
            mqtt.answers_topic.replace("{device}", device)
        }
    };
    let properties = PublishProperties {
        correlation_data: props.and_then(|p| p.correlation_data.clone()),
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    let payload = serde_json::to_vec(&body).expect("serialises");
    if let Err(e) = client
        .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties)
        .await
    {
        tracing::warn!(error = %e, "publishing a verdict");
    }
}

/// A message's payload as the batch body it stands for (WIRE.md "MQTT"): a JSON batch
/// (`{"readings": [...]}`) or one JSON item; a protobuf `ReadingBatch` or one `SignedReading`. One
/// item is framed as a batch of one, its bytes untouched.
fn as_batch(payload: &Bytes, max_bytes: usize) -> Result<(Bytes, body::Format), Refusal> {
    // HTTP's body limit (an MQTT payload has no content encoding).
    let payload = &body::decompress(None, payload.clone(), max_bytes).map_err(Refusal::Body)?;
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        let doc: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|e| Refusal::Body(BodyError::Undecodable(format!("JSON: {e}"))))?;
        if doc.get("readings").is_some() {
            return Ok((payload.clone(), body::Format::Json));
        }
        let mut wrapped = Vec::with_capacity(payload.len() + 16);
        wrapped.extend_from_slice(b"{\"readings\":[");
        wrapped.extend_from_slice(payload);
        wrapped.extend_from_slice(b"]}");
        return Ok((wrapped.into(), body::Format::Json));
    }
    // One SignedReading carries a 32-byte key and a 64-byte signature; a ReadingBatch read as one
    // has no signature (it has field 1 only).
    let single = hexpulse_schemas::wire::SignedReading::decode(payload.clone())
        .is_ok_and(|s| s.public_key.len() == 32 && s.signature.len() == 64);
    if !single {
        return Ok((payload.clone(), body::Format::Protobuf));
    }
    let mut framed = Vec::with_capacity(payload.len() + 6);
    framed.push(0x0a);
    let mut n = payload.len() as u64;
    while n >= 0x80 {
        framed.push((n as u8) | 0x80);
        n >>= 7;
    }
    framed.push(n as u8);
    framed.extend_from_slice(payload);
    Ok((framed.into(), body::Format::Protobuf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hexpulse_schemas::wire::{ReadingBatch, SignedReading};

    fn item(i: u8) -> SignedReading {
        SignedReading {
            public_key: vec![i; 32].into(),
            payload: vec![i; 200].into(),
            signature: vec![i; 64].into(),
            format: 0,
        }
    }

    #[test]
    fn one_reading_or_a_batch_in_either_encoding_is_a_batch() {
        // One protobuf item: framed as a batch of one, its bytes untouched.
        let one = Bytes::from(item(1).encode_to_vec());
        let (raw, format) = as_batch(&one, 1 << 20).unwrap();
        assert_eq!(format, body::Format::Protobuf);
        let items = body::parse_batch(format, raw, 10).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].value, one);
        // A protobuf batch: as it is.
        let batch = Bytes::from(
            ReadingBatch {
                readings: vec![item(1), item(2)],
            }
            .encode_to_vec(),
        );
        let (raw, _) = as_batch(&batch, 1 << 20).unwrap();
        assert_eq!(raw, batch);
        // One JSON item, and a JSON batch.
        let json_item =
            Bytes::from_static(br#" {"public_key": "ab", "signature": "cd", "payload": "AA=="}"#);
        let (raw, format) = as_batch(&json_item, 1 << 20).unwrap();
        assert_eq!(format, body::Format::Json);
        assert_eq!(body::parse_batch(format, raw, 10).unwrap().len(), 1);
        let json_batch = Bytes::from_static(br#"{"readings": []}"#);
        assert_eq!(as_batch(&json_batch, 1 << 20).unwrap().0, json_batch);
        // Past the body limit: refused as HTTP refuses it.
        assert!(matches!(
            as_batch(&batch, batch.len() - 1),
            Err(Refusal::Body(BodyError::TooLarge(_)))
        ));
        // Broken JSON is refused as a whole.
        assert!(matches!(
            as_batch(&Bytes::from_static(b"{nope"), 1 << 20),
            Err(Refusal::Body(BodyError::Undecodable(_)))
        ));
    }
}
