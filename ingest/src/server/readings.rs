//! `POST /v1/readings`, the HTTP door: the body read against the in-flight budget as it arrives,
//! then [`Ingest::submit`], and the answer (JSON, or protobuf on request) or the refusal's status.

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
    let source = s.client_of(peer.map(|p| p.0.0), &headers);
    let resp = match s.admit(source) {
        Ok(()) => handle_readings(&s, &headers, body, source).await,
        Err(r) => Err(r),
    }
    .unwrap_or_else(refusal_answer);
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
) -> Result<Response, Refusal> {
    let received_ms = now_ms();
    let format =
        body::format_of(header_str(headers, header::CONTENT_TYPE)).map_err(Refusal::Body)?;
    let encoding = header_str(headers, header::CONTENT_ENCODING);
    let declared =
        header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > s.cfg.max_body_bytes) {
        return Err(too_large(s));
    }
    // The body is reserved in the in-flight budget as it arrives, so a slow sender holds only what
    // it has sent (not its declared length); past the bound the request is refused, not queued.
    let (raw, permit) = read_body(s, body, declared).await?;
    let batch = Batch {
        raw,
        permit,
        encoding: encoding.map(str::to_string),
        format,
        source,
        received_ms,
    };
    let answer = s.submit(batch).await?;
    Ok(if headers_accept(headers) {
        let mut r = (StatusCode::OK, answer.encode_to_vec()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        r
    } else {
        let body = json!({"accepted": answer.accepted, "rejected": answer.rejected.iter().map(rejection_json).collect::<Vec<_>>()});
        (StatusCode::OK, axum::Json(body)).into_response()
    })
}

fn too_large(s: &Ingest) -> Refusal {
    Refusal::Body(BodyError::TooLarge(format!(
        "body exceeds {} bytes",
        s.cfg.max_body_bytes
    )))
}

/// Reads a request body, reserving in-flight budget as it arrives. The budget covers the buffer's
/// capacity, not only the bytes in it, so that it bounds the memory bodies hold: the buffer grows
/// by doubling (never past `declared`, the Content-Length, when there is one), and each growth is
/// reserved before it is allocated.
async fn read_body(
    s: &Ingest,
    body: Body,
    declared: Option<usize>,
) -> Result<(Bytes, tokio::sync::OwnedSemaphorePermit), Refusal> {
    use futures::StreamExt;
    let mut permit = s.reserve(PERMIT_BYTES)?;
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| Refusal::Body(BodyError::Undecodable(format!("reading the body: {e}"))))?;
        let need = buf.len() + chunk.len();
        if need > s.cfg.max_body_bytes {
            return Err(too_large(s));
        }
        if need > buf.capacity() {
            let cap = (buf.capacity() * 2)
                .min(declared.unwrap_or(usize::MAX))
                .min(s.cfg.max_body_bytes)
                .max(need);
            let held = permit.num_permits() * PERMIT_BYTES;
            if cap > held {
                permit.merge(s.reserve(cap - held)?);
            }
            buf.reserve_exact(cap - buf.len());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((Bytes::from(buf), permit))
}

fn headers_accept(h: &HeaderMap) -> bool {
    header_str(h, header::ACCEPT).is_some_and(|a| a.contains("application/x-protobuf"))
}

/// A refused batch's answer: its status, the error body, and the items' reasons where it has them.
pub(super) fn refusal_answer(r: Refusal) -> Response {
    let status = match &r {
        Refusal::RateLimited { .. }
        | Refusal::DevicesRateLimited { .. }
        | Refusal::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
        Refusal::Body(BodyError::UnsupportedMediaType(_) | BodyError::UnsupportedEncoding(_)) => {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        }
        Refusal::Body(BodyError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
        Refusal::Body(BodyError::Undecodable(_)) => StatusCode::BAD_REQUEST,
        Refusal::UnknownDevice { .. } => StatusCode::UNAUTHORIZED,
        Refusal::BrokerUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Refusal::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let retry = r.retry_after_s();
    let mut body = error_body(r.code(), &r.message(), retry);
    if matches!(
        r,
        Refusal::UnknownDevice { .. } | Refusal::DevicesRateLimited { .. }
    ) {
        body["accepted"] = 0.into();
        body["rejected"] = r.rejected().iter().map(rejection_json).collect();
    }
    json_answer(status, body, retry)
}

fn rejection_json(r: &ItemRejection) -> serde_json::Value {
    json!({"index": r.index, "code": r.code, "message": r.message})
}
