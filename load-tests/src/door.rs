//! The doors the simulator sends through (`--via`): HTTP `POST /v1/readings`, the gRPC stream
//! `hexpulse.v1.Ingest/Stream`, and MQTT through the bridge. Each answer is read as the HTTP
//! answer it stands for ([`Reply`]: the status and the JSON body), so that the ledger and the
//! accounting judge every door by one rule (WIRE.md's refusal codes name the same refusal on each).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::{Buf, BufMut, Bytes};
use futures::StreamExt;
use hexpulse_schemas::wire::{BatchAnswer, IngestResponse, ItemRejection, Refusal, batch_answer};
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

use crate::adversary::Outgoing;

/// Which door the simulator sends through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// `POST {target_url}/v1/readings`.
    #[default]
    Http,
    /// The bidirectional stream `hexpulse.v1.Ingest/Stream` at `target_url` (h2c), one stream per
    /// sender, one batch in flight on each.
    Grpc,
    /// QoS 1 messages to `hexpulse/v1/readings/{device}` on the MQTT broker `mqtt_broker`, each
    /// answered on the simulator's own MQTT 5 response topic.
    Mqtt,
}

impl FromStr for Via {
    type Err = String;

    fn from_str(s: &str) -> Result<Via, String> {
        match s {
            "http" => Ok(Via::Http),
            "grpc" => Ok(Via::Grpc),
            "mqtt" => Ok(Via::Mqtt),
            other => Err(format!("--via {other:?}: expected http, grpc or mqtt")),
        }
    }
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Via::Http => "http",
            Via::Grpc => "grpc",
            Via::Mqtt => "mqtt",
        })
    }
}

/// A door's answer to one request, as the HTTP answer it stands for: `status` 0 when none came
/// (a transport error, or no MQTT verdict in time).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Reply {
    fn none() -> Reply {
        Reply {
            status: 0,
            body: serde_json::Value::Null,
        }
    }
}

/// The HTTP status that WIRE.md gives each refusal code (the same refusal on every door).
pub fn status_of_code(code: &str) -> u16 {
    match code {
        "rate_limited" | "overloaded" => 429,
        "unsupported_media_type" => 415,
        "body_too_large" => 413,
        "undecodable_body" => 400,
        "unknown_device" => 401,
        "broker_unavailable" => 503,
        _ => 500,
    }
}

fn rejections_json(rejected: &[ItemRejection]) -> serde_json::Value {
    rejected
        .iter()
        .map(|r| json!({"index": r.index, "code": r.code, "message": r.message}))
        .collect()
}

fn verdicts(v: &IngestResponse) -> Reply {
    Reply {
        status: 200,
        body: json!({"accepted": v.accepted, "rejected": rejections_json(&v.rejected)}),
    }
}

fn refused(r: &Refusal) -> Reply {
    Reply {
        status: status_of_code(&r.code),
        body: json!({
            "error": {"code": r.code, "message": r.message},
            "accepted": 0,
            "rejected": rejections_json(&r.rejected),
        }),
    }
}

/// A gRPC status as the HTTP answer: our refusals carry themselves in `hexpulse-refusal-bin`; the
/// library's own (an oversize message is OUT_OF_RANGE) go by their code.
fn from_status(s: &Status) -> Reply {
    if let Some(r) = s
        .metadata()
        .get_bin("hexpulse-refusal-bin")
        .and_then(|v| v.to_bytes().ok())
        .and_then(|b| Refusal::decode(b).ok())
    {
        return refused(&r);
    }
    let code = match s.code() {
        Code::OutOfRange => "body_too_large",
        Code::InvalidArgument => "undecodable_body",
        Code::Unauthenticated => "unknown_device",
        Code::ResourceExhausted => "overloaded",
        Code::Unavailable => "broker_unavailable",
        // Cancelled, deadline exceeded, a broken connection: no answer about the batch.
        Code::Cancelled | Code::DeadlineExceeded | Code::Unknown => return Reply::none(),
        _ => "internal",
    };
    refused(&Refusal {
        code: code.into(),
        message: s.message().into(),
        ..Default::default()
    })
}

/// The simulator's connection to a door, shared by its senders.
#[derive(Clone)]
pub enum Door {
    Http {
        client: reqwest::Client,
        url: String,
    },
    Grpc(Arc<Grpc>),
    Mqtt(Arc<Mqtt>),
}

/// An HTTP/2 client for the gRPC door, and the ingest's address.
pub struct Grpc {
    client: GrpcClient,
    uri: http::Uri,
}

type GrpcClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    tonic::body::Body,
>;

impl Door {
    /// Connects to the door `via` of the ingest at `target_url` (HTTP, gRPC) or through the MQTT
    /// broker `mqtt_broker` (`host:port`).
    pub async fn open(
        via: Via,
        target_url: &str,
        mqtt_broker: &str,
        concurrency: usize,
    ) -> anyhow::Result<Door> {
        let base = target_url.trim_end_matches('/');
        Ok(match via {
            Via::Http => Door::Http {
                client: reqwest::Client::builder()
                    .pool_max_idle_per_host(concurrency)
                    .build()
                    .context("http client")?,
                url: format!("{base}/v1/readings"),
            },
            Via::Grpc => Door::Grpc(Arc::new(Grpc {
                client: hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .http2_only(true)
                .build_http(),
                uri: base
                    .parse()
                    .with_context(|| format!("target url {base:?}"))?,
            })),
            Via::Mqtt => Door::Mqtt(Arc::new(Mqtt::connect(mqtt_broker, concurrency).await?)),
        })
    }

    /// Which door this is.
    pub fn via(&self) -> Via {
        match self {
            Door::Http { .. } => Via::Http,
            Door::Grpc(_) => Via::Grpc,
            Door::Mqtt(_) => Via::Mqtt,
        }
    }

    /// A sender's own end of the door (a gRPC sender keeps its stream).
    pub fn sender(&self) -> Sender {
        Sender {
            door: self.clone(),
            stream: None,
        }
    }
}

/// One sender's end of a [`Door`].
pub struct Sender {
    door: Door,
    /// The gRPC stream: batches in, answers out.
    stream: Option<(
        futures::channel::mpsc::Sender<Bytes>,
        tonic::Streaming<BatchAnswer>,
    )>,
}

impl Sender {
    /// Sends one request and waits for its answer.
    pub async fn send(&mut self, out: &Outgoing) -> Reply {
        match &self.door {
            Door::Http { client, url } => {
                let resp = client
                    .post(url)
                    .header("content-type", out.content_type)
                    .body(out.body.clone())
                    .send()
                    .await;
                match resp {
                    Ok(r) => Reply {
                        status: r.status().as_u16(),
                        body: r.json().await.unwrap_or_default(),
                    },
                    Err(e) => {
                        tracing::debug!(error = %e, "request failed");
                        Reply::none()
                    }
                }
            }
            Door::Grpc(g) => {
                let g = g.clone();
                self.send_grpc(&g, Bytes::from(out.body.clone())).await
            }
            Door::Mqtt(m) => m.send(&out.body).await,
        }
    }

    async fn send_grpc(&mut self, door: &Grpc, batch: Bytes) -> Reply {
        use futures::SinkExt;
        let (tx, answers) = match &mut self.stream {
            Some(open) => open,
            None => {
                let (tx, rx) = futures::channel::mpsc::channel::<Bytes>(1);
                let mut grpc =
                    tonic::client::Grpc::with_origin(door.client.clone(), door.uri.clone());
                if let Err(e) = grpc.ready().await {
                    tracing::debug!(error = %e, "gRPC connection");
                    return Reply::none();
                }
                let path = http::uri::PathAndQuery::from_static("/hexpulse.v1.Ingest/Stream");
                match grpc
                    .streaming(tonic::Request::new(rx), path, RawCodec(PhantomData))
                    .await
                {
                    Ok(answers) => self.stream.insert((tx, answers.into_inner())),
                    Err(s) => return from_status(&s),
                }
            }
        };
        let answer = match tx.send(batch).await {
            Ok(()) => answers.next().await,
            // The call ended: its status comes as the answers' end.
            Err(_) => answers.next().await,
        };
        match answer {
            Some(Ok(a)) => match a.outcome {
                Some(batch_answer::Outcome::Verdicts(v)) => verdicts(&v),
                Some(batch_answer::Outcome::Refused(r)) => refused(&r),
                None => Reply::none(),
            },
            Some(Err(s)) => {
                self.stream = None;
                from_status(&s)
            }
            None => {
                self.stream = None;
                Reply::none()
            }
        }
    }
}

/// Encodes raw message bytes (the batch as the generator built it), decodes `T`.
struct RawCodec<T>(PhantomData<T>);

impl<T: Message + Default + Send + 'static> Codec for RawCodec<T> {
    type Encode = Bytes;
    type Decode = T;
    type Encoder = RawCodec<T>;
    type Decoder = RawCodec<T>;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec(PhantomData)
    }
}

impl<T> Encoder for RawCodec<T> {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put(item);
        Ok(())
    }
}

impl<T: Message + Default> Decoder for RawCodec<T> {
    type Item = T;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<T>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        T::decode(bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding the answer: {e}")))
    }
}

/// The MQTT door: one client session; each message names the simulator's response topic and a
/// correlation id, and the bridge's verdict comes back there.
pub struct Mqtt {
    client: rumqttc::v5::AsyncClient,
    answers_topic: String,
    next: AtomicU64,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>,
    timeout: Duration,
}

impl Mqtt {
    async fn connect(broker: &str, concurrency: usize) -> anyhow::Result<Mqtt> {
        use rumqttc::v5::mqttbytes::QoS;
        use rumqttc::v5::mqttbytes::v5::Packet;
        use rumqttc::v5::{Event, MqttOptions};
        let (host, port) = hexpulse_common::config::host_port(broker)
            .with_context(|| format!("mqtt broker {broker:?}: expected host:port"))?;
        let id = format!("hexpulse-sim-{:016x}", rand::random::<u64>());
        let mut options = MqttOptions::new(id.clone(), host, port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(Some(64 * 1024 * 1024));
        let (client, mut events) =
            rumqttc::v5::AsyncClient::new(options, concurrency.max(1) * 4 + 16);
        let answers_topic = format!("hexpulse/v1/sim/{id}");
        let waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>> = Arc::default();
        // Connected and subscribed before the first message.
        let (ready_tx, ready_rx) = oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let (w, c, topic) = (waiting.clone(), client.clone(), answers_topic.clone());
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    // A new session on every connection (clean start): subscribed each time.
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let (c, topic) = (c.clone(), topic.clone());
                        tokio::spawn(async move {
                            if let Err(e) = c.subscribe(topic, QoS::AtLeastOnce).await {
                                tracing::warn!(error = %e, "subscribing to the answers topic");
                            }
                        });
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let id = p
                            .properties
                            .as_ref()
                            .and_then(|props| props.correlation_data.as_ref())
                            .and_then(|c| <[u8; 8]>::try_from(c.as_ref()).ok())
                            .map(u64::from_be_bytes);
                        let body: serde_json::Value =
                            serde_json::from_slice(&p.payload).unwrap_or_default();
                        let status = match body["error"]["code"].as_str() {
                            Some(code) => status_of_code(code),
                            None => 200,
                        };
                        if let Some(tx) = id
                            .and_then(|id| w.lock().unwrap_or_else(|e| e.into_inner()).remove(&id))
                        {
                            let _ = tx.send(Reply { status, body });
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "simulator's MQTT connection; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .map_err(|_| anyhow::anyhow!("no answer from the MQTT broker {broker} in 10 s"))?
            .context("the MQTT connection")?;
        Ok(Mqtt {
            client,
            answers_topic,
            next: AtomicU64::new(1),
            waiting,
            timeout: Duration::from_secs(30),
        })
    }

    async fn send(&self, body: &[u8]) -> Reply {
        use rumqttc::v5::mqttbytes::QoS;
        use rumqttc::v5::mqttbytes::v5::PublishProperties;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let properties = PublishProperties {
            response_topic: Some(self.answers_topic.clone()),
            correlation_data: Some(Bytes::copy_from_slice(&id.to_be_bytes())),
            ..Default::default()
        };
        let topic = format!("hexpulse/v1/readings/sim-{}", id % 1024);
        if let Err(e) = self
            .client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, body.to_vec(), properties)
            .await
        {
            tracing::debug!(error = %e, "publishing");
            self.waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Reply::none();
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(reply)) => reply,
            _ => {
                self.waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                Reply::none()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_as_the_http_answer_they_stand_for() {
        let r = Refusal {
            code: "unknown_device".into(),
            message: "no such device".into(),
            retry_after_s: 0,
            rejected: vec![ItemRejection {
                index: 1,
                code: "unknown_device".into(),
                message: String::new(),
            }],
        };
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert_bin(
            "hexpulse-refusal-bin",
            tonic::metadata::MetadataValue::from_bytes(&r.encode_to_vec()),
        );
        let reply = from_status(&Status::with_metadata(Code::Unauthenticated, "x", md));
        assert_eq!(reply.status, 401);
        assert_eq!(reply.body["rejected"][0]["index"], 1);
        assert_eq!(from_status(&Status::out_of_range("big")).status, 413);
        assert_eq!(from_status(&Status::deadline_exceeded("slow")).status, 0);
        assert_eq!("mqtt".parse::<Via>(), Ok(Via::Mqtt));
        assert!("smtp".parse::<Via>().is_err());
    }
}
