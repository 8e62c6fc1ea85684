//! `POST /v1/sql`: read-only SQL (body: the SQL text, or JSON `{"sql": "..."}`), answered as
//! `application/json` (default), `text/csv` or `application/vnd.apache.arrow.stream` by `Accept`
//! or `?format=`, within `max_answer_bytes`; and the encoders the epoch endpoints share.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use super::error::{error, sql_error};
use super::state::AppState;
use crate::auth::Caller;
use crate::sql;

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// The answer format: `?format=` first, then `Accept`. (The error is a finished answer on the cold
/// path of a refused request, as in `api`.)
#[allow(clippy::result_large_err)]
pub(crate) fn wanted_format(
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<&'static str, Response> {
    if let Some(f) = params.get("format") {
        return match f.as_str() {
            "json" => Ok("json"),
            "csv" => Ok("csv"),
            "parquet" => Ok("parquet"),
            "arrow" => Ok("arrow"),
            other => Err(error(
                StatusCode::BAD_REQUEST,
                "bad_param",
                format!("format {other:?}: one of json, csv, parquet, arrow"),
            )),
        };
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Ok(if accept.contains("text/csv") {
        "csv"
    } else if accept.contains(ARROW_STREAM) {
        "arrow"
    } else if accept.contains("parquet") {
        "parquet"
    } else {
        "json"
    })
}

/// An answer body that refuses to grow past `max` bytes, and remembers that it did.
struct Capped {
    out: Vec<u8>,
    max: usize,
    refused: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.max {
            self.refused = true;
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                ANSWER_TOO_LARGE,
            ));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const ANSWER_TOO_LARGE: &str = "the encoded answer is larger than max_answer_bytes";

/// Why an answer could not be encoded.
enum EncodeError {
    /// It grew past `max_answer_bytes`.
    TooLarge,
    /// The writer failed.
    Failed(String),
}

fn encode(
    format: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    max: usize,
) -> Result<(&'static str, Vec<u8>), EncodeError> {
    let mut out = Capped {
        out: Vec::new(),
        max,
        refused: false,
    };
    let written = write_answer(format, schema, batches, &mut out);
    match written {
        Ok(content_type) => Ok((content_type, out.out)),
        Err(_) if out.refused => Err(EncodeError::TooLarge),
        Err(e) => Err(EncodeError::Failed(e)),
    }
}

fn write_answer(
    format: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    out: &mut Capped,
) -> Result<&'static str, String> {
    let content_type = match format {
        "csv" => {
            let mut w = datafusion::arrow::csv::Writer::new(&mut *out);
            for b in batches {
                w.write(b).map_err(|e| e.to_string())?;
            }
            "text/csv"
        }
        "arrow" => {
            let mut w = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut *out, schema)
                .map_err(|e| e.to_string())?;
            for b in batches {
                w.write(b).map_err(|e| e.to_string())?;
            }
            w.finish().map_err(|e| e.to_string())?;
            ARROW_STREAM
        }
        _ => {
            let mut w = datafusion::arrow::json::ArrayWriter::new(&mut *out);
            for b in batches {
                w.write(b).map_err(|e| e.to_string())?;
            }
            w.finish().map_err(|e| e.to_string())?;
            drop(w);
            if out.out.is_empty() {
                out.out.extend(b"[]");
            }
            "application/json"
        }
    };
    Ok(content_type)
}

pub(crate) fn respond(
    format: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    max: usize,
) -> Response {
    match encode(format, schema, batches, max) {
        Ok((ct, body)) => ([(header::CONTENT_TYPE, ct)], body).into_response(),
        Err(EncodeError::TooLarge) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "answer_limit",
            format!("{ANSWER_TOO_LARGE} ({max}); select fewer rows or columns, or ask for Arrow"),
        ),
        Err(EncodeError::Failed(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "encode", e),
    }
}

pub(crate) async fn run_sql(
    State(s): State<Arc<AppState>>,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let caller = caller.map(|axum::Extension(c)| c);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let query = match sql::request_text(content_type, &body) {
        Ok(q) => q,
        Err(e) => return sql_error(e),
    };
    let format = match wanted_format(&headers, &params) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let allow_raw = caller.as_ref().is_some_and(|c| s.gate.allows_raw(c));
    let resp = match s.run(query, allow_raw, s.cfg.max_rows).await {
        Ok((schema, batches)) => respond(format, &schema, &batches, s.cfg.max_answer_bytes),
        Err(e) => sql_error(e),
    };
    tracing::debug!(caller = caller.as_ref().map_or("?", |c| c.label()), status = %resp.status(), elapsed = ?started.elapsed(), "sql");
    resp
}
