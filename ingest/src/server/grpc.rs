//! The gRPC door, `hexpulse.v1.Ingest` (schemas/proto/hexpulse/v1/ingest.proto), on the device
//! listener next to `POST /v1/readings`: unary `Submit` and bidirectional `Stream`. Each batch goes
//! through [`Ingest::submit`], as an HTTP body does; this module only reads messages and maps a
//! [`Refusal`] to a gRPC status.
//!
//! The messages are taken as raw bytes (not decoded by tonic) so that each item's Kafka value is
//! the exact `SignedReading` bytes the device sent, as for HTTP ([`body::parse_batch`]).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Mutex;

use futures::{Stream, StreamExt};
use hexpulse_schemas::wire::{BatchAnswer, batch_answer::Outcome};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::Grpc;
use tonic::{Code, Status};

use super::*;

/// The service's routes, outside the HTTP request timeout (a stream lasts as long as it sends).
pub(super) fn routes(state: Arc<Ingest>) -> Router {
    Router::new()
        .route("/hexpulse.v1.Ingest/Submit", post(submit))
        .route("/hexpulse.v1.Ingest/Stream", post(stream))
        .with_state(state)
}

const SUBMIT: &str = "Submit";
const STREAM: &str = "Stream";

fn count_call(method: &'static str, code: Code) {
    metrics::counter!(m::GRPC_CALLS, "method" => method, "code" => code_name(code)).increment(1);
}

/// The status's name as gRPC documents it, for the metrics' `code` label.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::Unavailable => "UNAVAILABLE",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Internal => "INTERNAL",
        _ => "OTHER",
    }
}

/// The gRPC machinery with the batch limits: a message is at most `max_body_bytes`.
fn grpc<T: prost::Message + Send + 'static>(s: &Ingest) -> Grpc<RawCodec<T>> {
    Grpc::new(RawCodec(PhantomData)).max_decoding_message_size(s.cfg.max_body_bytes)
}

async fn submit(
    State(s): State<Arc<Ingest>>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    req: axum::extract::Request,
) -> Response {
    let received_ms = now_ms();
    let source = s.client_of(peer.map(|p| p.0.0), req.headers());
    // The address's budget before the message is read, as HTTP spends it before the body.
    if let Err(r) = s.admit(source) {
        let status = status_of(&r);
        count_call(SUBMIT, status.code());
        return status.into_http();
    }
    let mut grpc = grpc::<IngestResponse>(&s);
    let timeout = s.cfg.request_timeout;
    let service = tower::service_fn(move |r: tonic::Request<Bytes>| {
        let s = s.clone();
        async move {
            let batch = one_batch(&s, r.into_inner(), source, received_ms);
            let answer = match tokio::time::timeout(timeout, batch).await {
                Ok(answer) => answer.map_err(|r| status_of(&r)),
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "the batch was not answered within {timeout:?} (request_timeout); resend it: \
                     readings stored already are rejected as duplicates"
                ))),
            };
            count_call(
                SUBMIT,
                answer.as_ref().map_or_else(Status::code, |_| Code::Ok),
            );
            answer.map(tonic::Response::new)
        }
    });
    grpc.unary(service, req).await.map(axum::body::Body::new)
}

/// One batch of either method: spends the in-flight budget for its bytes, then [`Ingest::submit`].
async fn one_batch(
    s: &Arc<Ingest>,
    raw: Bytes,
    source: Option<IpAddr>,
    received_ms: i64,
) -> Result<IngestResponse, Refusal> {
    let permit = s.reserve(raw.len())?;
    s.submit(Batch {
        raw,
        permit,
        encoding: None,
        format: body::Format::Protobuf,
        source,
        received_ms,
    })
    .await
}

async fn stream(
    State(s): State<Arc<Ingest>>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    req: axum::extract::Request,
) -> Response {
    let source = s.client_of(peer.map(|p| p.0.0), req.headers());
    let slot = match s.streams.open(source, &s.cfg.grpc) {
        Ok(slot) => slot,
        Err(status) => {
            count_call(STREAM, status.code());
            return status.into_http();
        }
    };
    let mut grpc = grpc::<BatchAnswer>(&s);
    let service = tower::service_fn(move |r: tonic::Request<tonic::Streaming<Bytes>>| {
        let answers = answers(s.clone(), r.into_inner(), source, slot.clone());
        async move { Ok::<_, Status>(tonic::Response::new(answers)) }
    });
    grpc.streaming(service, req)
        .await
        .map(axum::body::Body::new)
}

/// A stream's answers: each batch read (until the client ends, the stream idles past
/// `stream_idle`, or ingest shuts down) goes through [`one_batch`], at most `stream_window` at once,
/// and is answered in the order the batches came.
fn answers(
    s: Arc<Ingest>,
    inbound: tonic::Streaming<Bytes>,
    source: Option<IpAddr>,
    slot: Arc<StreamSlot>,
) -> impl Stream<Item = Result<BatchAnswer, Status>> + Send + 'static {
    let idle = s.cfg.grpc.stream_idle;
    let window = s.cfg.grpc.stream_window.max(1);
    let shutdown = s.shutdown.clone();
    let batches = futures::stream::unfold(Some(inbound), move |inbound| {
        let shutdown = shutdown.clone();
        async move {
            let mut inbound = inbound?;
            let next = tokio::select! {
                _ = shutdown.cancelled() => Err(Status::unavailable(
                    "ingest is shutting down; the batches answered so far are stored: reconnect \
                     and send the rest",
                )),
                next = tokio::time::timeout(idle, inbound.message()) => match next {
                    Err(_) => Err(Status::deadline_exceeded(format!(
                        "no batch for {idle:?} (ingest.grpc.stream_idle); the stream is closed"
                    ))),
                    Ok(Err(status)) => Err(status),
                    Ok(Ok(None)) => return None,
                    Ok(Ok(Some(raw))) => Ok(raw),
                },
            };
            let more = next.is_ok().then_some(inbound);
            Some((next, more))
        }
    });
    batches
        .enumerate()
        .map(move |(n, next)| {
            let s = s.clone();
            // The stream holds its slot for as long as it lives.
            let _held = &slot;
            async move {
                let raw = match next {
                    Ok(raw) => raw,
                    Err(status) => {
                        count_call(STREAM, status.code());
                        return Err(status);
                    }
                };
                let admitted = s.admit(source);
                let outcome = match admitted {
                    Ok(()) => one_batch(&s, raw, source, now_ms()).await,
                    Err(r) => Err(r),
                };
                let outcome = match outcome {
                    Ok(verdicts) => Outcome::Verdicts(verdicts),
                    Err(r) => {
                        metrics::counter!(m::GRPC_STREAM_REFUSED, "code" => r.code()).increment(1);
                        Outcome::Refused(r.to_wire())
                    }
                };
                Ok(BatchAnswer {
                    batch: n as u64,
                    outcome: Some(outcome),
                })
            }
        })
        .buffered(window)
}

/// A refusal as a gRPC status: the code, the message, the retry delay (`retry-after`, seconds) and
/// the refusal itself, items' reasons included (`hexpulse-refusal-bin`).
fn status_of(r: &Refusal) -> Status {
    let code = match r {
        Refusal::RateLimited { .. }
        | Refusal::DevicesRateLimited { .. }
        | Refusal::Overloaded(_) => Code::ResourceExhausted,
        Refusal::Body(_) => Code::InvalidArgument,
        Refusal::UnknownDevice { .. } => Code::Unauthenticated,
        Refusal::BrokerUnavailable(_) => Code::Unavailable,
        Refusal::Internal(_) => Code::Internal,
    };
    let mut metadata = MetadataMap::new();
    if let Some(secs) = r.retry_after_s() {
        metadata.insert("retry-after", MetadataValue::from(secs));
    }
    metadata.insert_bin(
        "hexpulse-refusal-bin",
        MetadataValue::from_bytes(&r.to_wire().encode_to_vec()),
    );
    Status::with_metadata(code, r.message(), metadata)
}

/// The open `Stream` calls, in all and per client address.
#[derive(Default)]
pub(super) struct Streams {
    open: Arc<Mutex<StreamCounts>>,
}

#[derive(Default)]
struct StreamCounts {
    total: usize,
    by_client: HashMap<Option<IpAddr>, usize>,
}

/// One open stream's place in [`Streams`], given back when the stream ends.
pub(super) struct StreamSlot {
    open: Arc<Mutex<StreamCounts>>,
    client: Option<IpAddr>,
}

impl Streams {
    fn open(
        &self,
        source: Option<IpAddr>,
        cfg: &crate::config::GrpcConfig,
    ) -> Result<Arc<StreamSlot>, Status> {
        let client = source.map(hexpulse_common::ratelimit::client_key);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mine = open.by_client.get(&client).copied().unwrap_or(0);
        if open.total >= cfg.max_streams {
            return Err(too_many_streams(format!(
                "ingest has {} streams open, its limit (ingest.grpc.max_streams)",
                cfg.max_streams
            )));
        }
        if mine >= cfg.max_streams_per_client {
            return Err(too_many_streams(format!(
                "this address has {mine} streams open, the limit per client \
                 (ingest.grpc.max_streams_per_client)"
            )));
        }
        open.total += 1;
        *open.by_client.entry(client).or_default() += 1;
        metrics::gauge!(m::GRPC_STREAMS_OPEN).set(open.total as f64);
        Ok(Arc::new(StreamSlot {
            open: self.open.clone(),
            client,
        }))
    }
}

fn too_many_streams(why: String) -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert("retry-after", MetadataValue::from(1u32));
    Status::with_metadata(Code::ResourceExhausted, why, metadata)
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        if let Some(n) = open.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.by_client.remove(&self.client);
            }
        }
        metrics::gauge!(m::GRPC_STREAMS_OPEN).set(open.total as f64);
    }
}

/// Messages in as their bytes (each item's bytes go to Kafka as sent), answers out as `T`.
struct RawCodec<T>(PhantomData<T>);

impl<T: prost::Message + Send + 'static> Codec for RawCodec<T> {
    type Encode = T;
    type Decode = Bytes;
    type Encoder = RawCodec<T>;
    type Decoder = RawCodec<T>;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec(PhantomData)
    }
}

impl<T: prost::Message> Encoder for RawCodec<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding the answer: {e}")))
    }
}

impl<T> Decoder for RawCodec<T> {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        use bytes::Buf;
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every refusal gets the status the door documents (ingest.proto), its retry delay, and
    /// itself in `hexpulse-refusal-bin`.
    #[test]
    fn refusals_map_to_the_documented_statuses() {
        let item = ItemRejection {
            index: 0,
            code: "unknown_device".into(),
            message: "not registered".into(),
        };
        let wait = Duration::from_millis(2500);
        let cases = [
            (
                Refusal::RateLimited { why: "rate", wait },
                Code::ResourceExhausted,
                Some("3"),
            ),
            (
                Refusal::DevicesRateLimited {
                    wait,
                    rejected: vec![item.clone()],
                },
                Code::ResourceExhausted,
                Some("3"),
            ),
            (
                Refusal::Overloaded("full"),
                Code::ResourceExhausted,
                Some("1"),
            ),
            (
                Refusal::Body(BodyError::Undecodable("x".into())),
                Code::InvalidArgument,
                None,
            ),
            (
                Refusal::Body(BodyError::TooLarge("x".into())),
                Code::InvalidArgument,
                None,
            ),
            (
                Refusal::UnknownDevice {
                    rejected: vec![item.clone()],
                },
                Code::Unauthenticated,
                None,
            ),
            (
                Refusal::BrokerUnavailable("down"),
                Code::Unavailable,
                Some("2"),
            ),
            (Refusal::Internal("bug"), Code::Internal, None),
        ];
        for (refusal, code, retry) in cases {
            let status = status_of(&refusal);
            assert_eq!(status.code(), code, "{refusal:?}");
            assert_eq!(status.message(), refusal.message());
            let md = status.metadata();
            assert_eq!(
                md.get("retry-after").and_then(|v| v.to_str().ok()),
                retry,
                "{refusal:?}"
            );
            let bin = md
                .get_bin("hexpulse-refusal-bin")
                .and_then(|v| v.to_bytes().ok())
                .expect("the refusal travels with the status");
            let wire = hexpulse_schemas::wire::Refusal::decode(bin).expect("decodes");
            assert_eq!(wire.code, refusal.code());
            assert_eq!(wire.rejected, refusal.rejected());
            assert_eq!(wire.retry_after_s, retry.map_or(0, |r| r.parse().unwrap()));
        }
    }
}
