//! `POST /v1/readings`: the body read against the in-flight budget, the checks on the verify
//! pool, the produce to Kafka, and the answer.

use super::*;

pub(super) fn count_request(status: StatusCode) {
    metrics::counter!(m::REQUESTS, "status" => status.as_str().to_owned()).increment(1);
}

pub(super) async fn post_readings(
    State(s): State<Arc<Ingest>>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    let source = peer
        .map(|axum::Extension(ConnectInfo(p))| client_ip(p.ip(), &headers, &s.cfg.trusted_proxies));
    let limited = source.and_then(|ip| s.per_ip.check(&ip).err());
    let resp = match limited {
        Some(wait) => rate_limited("too many requests from this address", wait),
        None => handle_readings(&s, &headers, body, source).await,
    };
    count_request(resp.status());
    metrics::histogram!(m::REQUEST_SECONDS).record(start.elapsed().as_secs_f64());
    resp
}

pub(super) fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn handle_readings(
    s: &Arc<Ingest>,
    headers: &HeaderMap,
    body: Body,
    source: Option<IpAddr>,
) -> Response {
    let bad_share = s.bad_shares.of(source);
    let received_ms = now_ms();
    let format = match body::format_of(header_str(headers, header::CONTENT_TYPE)) {
        Ok(f) => f,
        Err(e) => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                e,
            );
        }
    };
    let encoding = header_str(headers, header::CONTENT_ENCODING);
    let declared =
        header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > s.cfg.max_body_bytes) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("body exceeds {} bytes", s.cfg.max_body_bytes),
        );
    }
    // The body is reserved in the in-flight budget as it arrives, so a slow sender holds only what
    // it has sent (not its declared length); past the bound the request is refused, not queued.
    let (raw, permit) = match read_body(s, body, declared).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    // Decompression, parsing and the checks run on the CPU pool, off the I/O runtime. The job owns
    // the reservation: a client that goes away once it has uploaded does not free the budget while
    // its job still waits or runs, so the budget also bounds the pool's queue.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job = Job {
        encoding: encoding.map(str::to_string),
        format,
        raw,
        permit,
        bad_share: bad_share.clone(),
        state: s.clone(),
    };
    s.pool.spawn(move || {
        let _ = tx.send(job.run());
    });
    let Ok((done, _permit)) = rx.await else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "verification task failed",
        );
    };
    let (items, checked) = match done {
        Ok(r) => r,
        Err(JobError::Body(e)) => return body_error(e),
        Err(JobError::Overloaded) => return overloaded("too many bytes in flight"),
    };
    metrics::histogram!(m::VERIFY_BATCH_SIZE).record(checked.verify_batch_size as f64);
    metrics::histogram!(m::VERIFY_SECONDS).record(checked.verify_time.as_secs_f64());
    metrics::gauge!(m::BAD_SIGNATURE_SHARE).set(bad_share.get());
    respond(
        s,
        &headers_accept(headers),
        items,
        checked,
        received_ms,
        source,
    )
    .await
}

/// Reads a request body, reserving in-flight budget as it arrives. The budget covers the buffer's
/// capacity, not only the bytes in it, so that it bounds the memory bodies hold: the buffer grows
/// by doubling (never past `declared`, the Content-Length, when there is one), and each growth is
/// reserved before it is allocated.
async fn read_body(
    s: &Ingest,
    body: Body,
    declared: Option<usize>,
) -> Result<(Bytes, tokio::sync::OwnedSemaphorePermit), Response> {
    use futures::StreamExt;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("body exceeds {} bytes", s.cfg.max_body_bytes),
        )
    };
    let Some(mut permit) = try_reserve(s, PERMIT_BYTES) else {
        return Err(overloaded("too many bytes in flight"));
    };
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| error(StatusCode::BAD_REQUEST, "body_read_failed", e))?;
        let need = buf.len() + chunk.len();
        if need > s.cfg.max_body_bytes {
            return Err(too_large());
        }
        if need > buf.capacity() {
            let cap = (buf.capacity() * 2)
                .min(declared.unwrap_or(usize::MAX))
                .min(s.cfg.max_body_bytes)
                .max(need);
            let held = permit.num_permits() * PERMIT_BYTES;
            if cap > held {
                match try_reserve(s, cap - held) {
                    Some(more) => permit.merge(more),
                    None => return Err(overloaded("too many bytes in flight")),
                }
            }
            buf.reserve_exact(cap - buf.len());
        }
        buf.extend_from_slice(&chunk);
        publish_inflight(s);
    }
    Ok((Bytes::from(buf), permit))
}

fn publish_inflight(s: &Ingest) {
    metrics::gauge!(m::INFLIGHT_BYTES)
        .set(((s.inflight_permits - s.inflight.available_permits()) * PERMIT_BYTES) as f64);
}

/// The running share of bad signatures per source (client address, as rate limits key it), so
/// that a client sending many bad signatures makes only its own batches verify in small chunks,
/// not everyone's. A new source starts at zero. At most [`MAX_SOURCES`] are remembered; when full,
/// sources whose share has fallen to about zero are forgotten (they start again at zero), and past
/// that new sources share one estimate.
#[derive(Default)]
pub(super) struct SourceShares {
    by_source: std::sync::Mutex<std::collections::HashMap<IpAddr, Arc<BadShare>>>,
    shared: Arc<BadShare>,
}

const MAX_SOURCES: usize = 65_536;

impl SourceShares {
    fn of(&self, source: Option<IpAddr>) -> Arc<BadShare> {
        let Some(ip) = source else {
            return self.shared.clone();
        };
        let mut map = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(share) = map.get(&ip) {
            return share.clone();
        }
        if map.len() >= MAX_SOURCES {
            map.retain(|_, share| share.get() > 1e-4);
            if map.len() >= MAX_SOURCES {
                return self.shared.clone();
            }
        }
        map.entry(ip).or_default().clone()
    }
}

/// The CPU-pool part of a request: decompress, parse, check. It owns the request's reservation.
struct Job {
    encoding: Option<String>,
    format: body::Format,
    raw: Bytes,
    permit: tokio::sync::OwnedSemaphorePermit,
    /// The running share of bad signatures of the request's source.
    bad_share: Arc<BadShare>,
    state: Arc<Ingest>,
}

enum JobError {
    Body(BodyError),
    Overloaded,
}

/// A batch's items and the verdicts of its checks.
type Parsed = (Vec<RawItem>, Checked);

impl Job {
    fn run(mut self) -> (Result<Parsed, JobError>, tokio::sync::OwnedSemaphorePermit) {
        let r = self.work();
        (r, self.permit)
    }

    fn work(&mut self) -> Result<Parsed, JobError> {
        let s = &self.state;
        let raw = std::mem::take(&mut self.raw);
        let raw_len = raw.len();
        let decompressed =
            body::decompress(self.encoding.as_deref(), raw, s.cfg.max_decompressed_bytes)
                .map_err(JobError::Body)?;
        if decompressed.len() > raw_len {
            let more = try_reserve(s, decompressed.len() - raw_len).ok_or(JobError::Overloaded)?;
            self.permit.merge(more);
            publish_inflight(s);
        }
        let items = body::parse_batch(self.format, decompressed, s.cfg.max_items)
            .map_err(JobError::Body)?;
        let checked = pipeline::check_batch(&items, &s.registry, &self.bad_share);
        Ok((items, checked))
    }
}

fn try_reserve(s: &Ingest, bytes: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let n = bytes.div_ceil(PERMIT_BYTES).clamp(1, s.inflight_permits) as u32;
    s.inflight.clone().try_acquire_many_owned(n).ok()
}

pub(super) fn rate_limited(why: &str, wait: Duration) -> Response {
    error_answer(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        why,
        Some(retry_after_secs(wait)),
    )
}

fn overloaded(why: &str) -> Response {
    error_answer(StatusCode::TOO_MANY_REQUESTS, "overloaded", why, Some(1))
}

fn body_error(e: BodyError) -> Response {
    match &e {
        BodyError::UnsupportedMediaType(_) | BodyError::UnsupportedEncoding(_) => error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            e,
        ),
        BodyError::TooLarge(_) => error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", e),
        BodyError::Undecodable(_) => error(StatusCode::BAD_REQUEST, "undecodable_body", e),
    }
}

fn headers_accept(h: &HeaderMap) -> bool {
    header_str(h, header::ACCEPT).is_some_and(|a| a.contains("application/x-protobuf"))
}

async fn respond(
    s: &Ingest,
    protobuf: &bool,
    items: Vec<RawItem>,
    checked: Checked,
    received_ms: i64,
    source: Option<IpAddr>,
) -> Response {
    let mut rejected: Vec<ItemRejection> = Vec::new();
    let mut to_send: Vec<(usize, (Bytes, Bytes))> = Vec::new();
    let mut device_wait: Option<Duration> = None;
    for (i, (item, verdict)) in items.into_iter().zip(&checked.verdicts).enumerate() {
        match verdict {
            Ok(()) => {
                let key = item
                    .envelope
                    .as_ref()
                    .map(|e| e.public_key.clone())
                    .unwrap_or_default();
                if let Err(wait) = s.per_device.check(&(key.clone(), source)) {
                    device_wait = Some(device_wait.map_or(wait, |w| w.min(wait)));
                    metrics::counter!(m::ITEMS, "outcome" => "rejected", "reason" => RejectReason::RateExceeded.as_str())
                        .increment(1);
                    rejected.push(ItemRejection {
                        index: i as u32,
                        code: RejectReason::RateExceeded.as_str().into(),
                        message: format!(
                            "the device is over its ingest rate ({} readings/s); retry later",
                            s.cfg.rate_per_device.per_second
                        ),
                    });
                    continue;
                }
                to_send.push((i, (key, item.value)));
            }
            Err(r) => {
                metrics::counter!(m::ITEMS, "outcome" => "rejected", "reason" => r.reason.as_str())
                    .increment(1);
                rejected.push(ItemRejection {
                    index: i as u32,
                    code: r.reason.as_str().into(),
                    message: r.message.clone(),
                });
            }
        }
    }
    if checked.all_unknown_device() {
        let mut body = error_body(
            "unknown_device",
            "no item of the batch comes from a registered device",
            None,
        );
        body["accepted"] = 0.into();
        body["rejected"] = rejected.iter().map(rejection_json).collect();
        return json_answer(StatusCode::UNAUTHORIZED, body, None);
    }
    if let (true, Some(wait)) = (to_send.is_empty(), device_wait) {
        let secs = retry_after_secs(wait);
        let mut body = error_body(
            "rate_limited",
            "the batch's devices are over their ingest rate; nothing was accepted",
            Some(secs),
        );
        body["accepted"] = 0.into();
        body["rejected"] = rejected.iter().map(rejection_json).collect();
        return json_answer(StatusCode::TOO_MANY_REQUESTS, body, Some(secs));
    }
    let mut accepted = 0u32;
    let mut not_delivered = Vec::new();
    if !to_send.is_empty() {
        if !s.sink.broker_up() {
            return error_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                "the Kafka broker is unreachable; nothing was accepted",
                Some(2),
            );
        }
        let records: Vec<(Bytes, Bytes)> = to_send.iter().map(|(_, r)| r.clone()).collect();
        let results = s.sink.produce_all(&records, received_ms).await;
        for ((i, _), res) in to_send.iter().zip(results) {
            match res {
                Ok(()) => accepted += 1,
                Err(f) => not_delivered.push((*i, f)),
            }
        }
        metrics::counter!(m::ITEMS, "outcome" => "accepted", "reason" => "")
            .increment(accepted.into());
        if accepted == 0 {
            let queue_full = not_delivered
                .iter()
                .all(|(_, f)| *f == DeliveryFailure::QueueFull);
            return if queue_full {
                overloaded("the producer queue is full; nothing was accepted")
            } else {
                error_answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "broker_unavailable",
                    "the broker did not acknowledge; nothing was accepted",
                    Some(2),
                )
            };
        }
        for (i, f) in not_delivered {
            metrics::counter!(m::ITEMS, "outcome" => "not_delivered", "reason" => f.code())
                .increment(1);
            rejected.push(ItemRejection {
                index: i as u32,
                code: f.code().into(),
                message: "not acknowledged by Kafka; retry this item".into(),
            });
        }
        rejected.sort_by_key(|r| r.index);
    }
    let answer = IngestResponse { accepted, rejected };
    if *protobuf {
        let mut r = (StatusCode::OK, answer.encode_to_vec()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        r
    } else {
        let body = json!({"accepted": answer.accepted, "rejected": answer.rejected.iter().map(rejection_json).collect::<Vec<_>>()});
        (StatusCode::OK, axum::Json(body)).into_response()
    }
}

fn rejection_json(r: &ItemRejection) -> serde_json::Value {
    json!({"index": r.index, "code": r.code, "message": r.message})
}
