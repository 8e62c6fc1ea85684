//! Request body handling: content type, content encoding, size limits and batch decoding.
//!
//! A protobuf batch is split into its items by walking the `ReadingBatch` framing, so each item's Kafka
//! value is the exact `SignedReading` bytes the device sent, not a re-encoding. An item whose own bytes
//! do not decode is rejected alone (`malformed`); a body whose framing is broken is a 400.

use std::io::Read;

use bytes::Bytes;
use hexpulse_schemas::check::Rejection;
use hexpulse_schemas::json::JsonBatch;
use hexpulse_schemas::reasons::RejectReason;
use hexpulse_schemas::wire::SignedReading;
use prost::Message;

/// Body formats ingest accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Protobuf,
    Json,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BodyError {
    #[error("unsupported content type {0:?}; use application/x-protobuf or application/json")]
    UnsupportedMediaType(String),
    #[error("unsupported content encoding {0:?}; use gzip, zstd or none")]
    UnsupportedEncoding(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("undecodable body: {0}")]
    Undecodable(String),
}

/// The body format named by a `Content-Type` value.
pub fn format_of(content_type: Option<&str>) -> Result<Format, BodyError> {
    let raw = content_type.unwrap_or("");
    let media = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/x-protobuf" | "application/protobuf" | "application/vnd.google.protobuf" => {
            Ok(Format::Protobuf)
        }
        "application/json" => Ok(Format::Json),
        _ => Err(BodyError::UnsupportedMediaType(raw.to_string())),
    }
}

/// Decompresses per `Content-Encoding`, never producing more than `max` bytes.
pub fn decompress(encoding: Option<&str>, body: Bytes, max: usize) -> Result<Bytes, BodyError> {
    let enc = encoding.unwrap_or("").trim().to_ascii_lowercase();
    let reader: Box<dyn Read + '_> = match enc.as_str() {
        "" | "identity" => {
            if body.len() > max {
                return Err(too_large_decompressed(max));
            }
            return Ok(body);
        }
        "gzip" | "x-gzip" => Box::new(flate2::read::GzDecoder::new(body.as_ref())),
        "zstd" => Box::new(
            zstd::stream::read::Decoder::new(body.as_ref())
                .map_err(|e| BodyError::Undecodable(format!("zstd: {e}")))?,
        ),
        other => return Err(BodyError::UnsupportedEncoding(other.to_string())),
    };
    let mut out = Vec::with_capacity((body.len() * 4).min(max));
    // One byte past the limit tells "exactly at the limit" from "over it" without inflating further.
    reader
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::Undecodable(format!("{enc}: {e}")))?;
    if out.len() > max {
        return Err(too_large_decompressed(max));
    }
    Ok(out.into())
}

fn too_large_decompressed(max: usize) -> BodyError {
    BodyError::TooLarge(format!("decompressed body exceeds {max} bytes"))
}

/// One item of a batch: the bytes to put on Kafka and the decoded envelope (or why it did not decode).
#[derive(Debug, Clone)]
pub struct RawItem {
    pub value: Bytes,
    pub envelope: Result<SignedReading, Rejection>,
}

/// Splits and decodes a batch; errors when the body as a whole is undecodable or has too many items.
pub fn parse_batch(
    format: Format,
    body: Bytes,
    max_items: usize,
) -> Result<Vec<RawItem>, BodyError> {
    let items = match format {
        Format::Protobuf => split_protobuf(&body, max_items)?
            .into_iter()
            .map(|value| {
                let envelope = SignedReading::decode(value.clone()).map_err(|e| {
                    Rejection::new(RejectReason::Malformed, format!("signed reading: {e}"))
                });
                RawItem { value, envelope }
            })
            .collect(),
        Format::Json => {
            let batch: JsonBatch = serde_json::from_slice(&body)
                .map_err(|e| BodyError::Undecodable(format!("JSON: {e}")))?;
            check_count(batch.readings.len(), max_items)?;
            batch
                .readings
                .iter()
                .map(|j| match j.to_signed() {
                    Ok(s) => RawItem {
                        value: s.encode_to_vec().into(),
                        envelope: Ok(s),
                    },
                    Err(m) => RawItem {
                        value: serde_json::to_vec(j).expect("serialises").into(),
                        envelope: Err(Rejection::new(RejectReason::Malformed, m)),
                    },
                })
                .collect()
        }
    };
    Ok(items)
}

fn check_count(n: usize, max: usize) -> Result<(), BodyError> {
    if n > max {
        return Err(BodyError::TooLarge(format!(
            "batch has {n} items; the limit is {max}"
        )));
    }
    Ok(())
}

/// Walks `ReadingBatch` framing: field 1 (length-delimited) is an item; other fields are skipped.
fn split_protobuf(body: &Bytes, max_items: usize) -> Result<Vec<Bytes>, BodyError> {
    let bad = |m: &str| BodyError::Undecodable(format!("protobuf ReadingBatch: {m}"));
    let mut items = Vec::new();
    let mut pos = 0usize;
    while pos < body.len() {
        let key = varint(body, &mut pos).ok_or_else(|| bad("truncated field key"))?;
        let (field, wire) = (key >> 3, key & 7);
        if field == 0 {
            return Err(bad("field number 0"));
        }
        match wire {
            0 => {
                varint(body, &mut pos).ok_or_else(|| bad("truncated varint"))?;
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if pos + n > body.len() {
                    return Err(bad("truncated fixed field"));
                }
                pos += n;
            }
            2 => {
                let len = varint(body, &mut pos).ok_or_else(|| bad("truncated length"))? as usize;
                let end = pos
                    .checked_add(len)
                    .filter(|e| *e <= body.len())
                    .ok_or_else(|| bad("length past end of body"))?;
                if field == 1 {
                    items.push(body.slice(pos..end));
                    check_count(items.len(), max_items)?;
                }
                pos = end;
            }
            _ => return Err(bad(&format!("unsupported wire type {wire}"))),
        }
    }
    Ok(items)
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hexpulse_schemas::wire::ReadingBatch;

    fn item(i: u8) -> SignedReading {
        SignedReading {
            public_key: vec![i; 32].into(),
            payload: vec![i; 10].into(),
            signature: vec![i; 64].into(),
            format: 0,
        }
    }

    #[test]
    fn protobuf_split_keeps_item_bytes() {
        let batch = ReadingBatch {
            readings: vec![item(1), item(2)],
        };
        let items = parse_batch(Format::Protobuf, batch.encode_to_vec().into(), 10).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].value, Bytes::from(item(2).encode_to_vec()));
        assert_eq!(items[0].envelope.as_ref().unwrap(), &item(1));
        assert!(matches!(
            parse_batch(Format::Protobuf, batch.encode_to_vec().into(), 1),
            Err(BodyError::TooLarge(_))
        ));
        assert!(matches!(
            parse_batch(Format::Protobuf, Bytes::from_static(&[0x0a, 0x50, 1]), 10),
            Err(BodyError::Undecodable(_))
        ));
    }

    #[test]
    fn zip_bomb_is_cut_off() {
        let zeros = vec![0u8; 10 << 20];
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut enc, &zeros).unwrap();
        let gz = enc.finish().unwrap();
        assert!(gz.len() < 64 << 10);
        assert!(matches!(
            decompress(Some("gzip"), gz.into(), 1 << 20),
            Err(BodyError::TooLarge(_))
        ));
        let z = zstd::encode_all(zeros.as_slice(), 3).unwrap();
        assert!(matches!(
            decompress(Some("zstd"), z.into(), 1 << 20),
            Err(BodyError::TooLarge(_))
        ));
        assert!(matches!(
            decompress(Some("br"), Bytes::new(), 10),
            Err(BodyError::UnsupportedEncoding(_))
        ));
    }

    #[test]
    fn content_types() {
        assert_eq!(
            format_of(Some("application/json; charset=utf-8")).unwrap(),
            Format::Json
        );
        assert_eq!(
            format_of(Some("Application/X-Protobuf")).unwrap(),
            Format::Protobuf
        );
        assert!(format_of(Some("text/plain")).is_err());
        assert!(format_of(None).is_err());
    }
}
