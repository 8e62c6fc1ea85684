//! Ed25519 signing and verification of reading payloads.
//!
//! The signed message is [`DOMAIN_PREFIX`] followed by the payload bytes exactly as sent. The prefix
//! keeps a Hexpulse signature from being valid in any other protocol that signs raw bytes with the
//! same key. Verification uses the RFC 8032 "strict" rules of ed25519-dalek (canonical `S`,
//! no small-order `R`), and keys of small order are refused before any signature is looked at.
//!
//! [`verify_batch`] checks many signatures with one multiscalar multiplication. When a batch fails it
//! bisects: each half is batch-checked again, so good items are never re-checked one by one.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// Domain separation prefix prepended to the payload before signing.
pub const DOMAIN_PREFIX: &[u8] = b"hexpulse/v1/reading\x00";

/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// A failing batch is checked again in chunks of this many; a failing chunk item by item.
///
/// Measured on the build machine: a batch check costs about 0.4 of a single verification per item,
/// so with one bad signature among 50 this costs about 50 + 50 + 16 × 2.5 ≈ 140 batch-item units,
/// where bisection (every level checked again, halves down to pairs) cost about 150 plus its leaves,
/// and checking all 50 singly after the failed batch 50 + 125. See `hexpulse bench ingest`.
pub const RECHECK_CHUNK: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("public key must be {PUBLIC_KEY_LEN} bytes, got {0}")]
    Length(usize),
    #[error("public key is not a valid Ed25519 point")]
    NotAPoint,
    #[error("public key is of small order (weak)")]
    Weak,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("signature must be {SIGNATURE_LEN} bytes, got {0}")]
    Length(usize),
    #[error("signature does not verify")]
    Invalid,
}

/// The message a device signs: prefix plus payload.
pub fn signing_message(payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(DOMAIN_PREFIX.len() + payload.len());
    msg.extend_from_slice(DOMAIN_PREFIX);
    msg.extend_from_slice(payload);
    msg
}

/// Signs `payload` as a device would.
pub fn sign(key: &SigningKey, payload: &[u8]) -> [u8; SIGNATURE_LEN] {
    key.sign(&signing_message(payload)).to_bytes()
}

/// A deterministic device key from a 32-byte seed (RFC 8032 secret key).
pub fn signing_key_from_seed(seed: [u8; 32]) -> SigningKey {
    SigningKey::from_bytes(&seed)
}

/// Parses a public key and refuses invalid and weak (small-order) ones.
pub fn parse_public_key(bytes: &[u8]) -> Result<VerifyingKey, KeyError> {
    let arr: &[u8; PUBLIC_KEY_LEN] = bytes
        .try_into()
        .map_err(|_| KeyError::Length(bytes.len()))?;
    let key = VerifyingKey::from_bytes(arr).map_err(|_| KeyError::NotAPoint)?;
    if key.is_weak() {
        return Err(KeyError::Weak);
    }
    Ok(key)
}

/// Parses a signature's bytes (length only; validity is decided by verification).
pub fn parse_signature(bytes: &[u8]) -> Result<Signature, SignatureError> {
    let arr: &[u8; SIGNATURE_LEN] = bytes
        .try_into()
        .map_err(|_| SignatureError::Length(bytes.len()))?;
    Ok(Signature::from_bytes(arr))
}

/// Verifies one signature over `DOMAIN_PREFIX || payload`.
pub fn verify(
    key: &VerifyingKey,
    payload: &[u8],
    signature: &Signature,
) -> Result<(), SignatureError> {
    key.verify_strict(&signing_message(payload), signature)
        .map_err(|_| SignatureError::Invalid)
}

/// One item of a batch verification.
#[derive(Clone, Copy, Debug)]
pub struct BatchItem<'a> {
    pub key: &'a VerifyingKey,
    pub payload: &'a [u8],
    pub signature: &'a Signature,
}

/// Statistics of one [`verify_batch`] call, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Batch equations evaluated (1 when everything is valid).
    pub batch_checks: usize,
    /// Single verifications done at bisection leaves.
    pub single_checks: usize,
}

/// Verifies every item; `result[i]` tells whether item `i` is valid.
///
/// A valid batch costs one batch check. A failing one is checked again in chunks of
/// [`RECHECK_CHUNK`], and a failing chunk item by item; an item is accepted only if a batch containing
/// it verified (and its `R` is not of small order) or it verified alone under the strict rules.
pub fn verify_batch(items: &[BatchItem<'_>]) -> (Vec<bool>, BatchStats) {
    let mut ok = vec![false; items.len()];
    let mut stats = BatchStats::default();
    if items.is_empty() {
        return (ok, stats);
    }
    // Build every signed message once, in one buffer.
    let total: usize = items
        .iter()
        .map(|i| DOMAIN_PREFIX.len() + i.payload.len())
        .sum();
    let mut buf = Vec::with_capacity(total);
    let mut bounds = Vec::with_capacity(items.len());
    for item in items {
        let start = buf.len();
        buf.extend_from_slice(DOMAIN_PREFIX);
        buf.extend_from_slice(item.payload);
        bounds.push(start..buf.len());
    }
    let messages: Vec<&[u8]> = bounds.iter().map(|r| &buf[r.clone()]).collect();
    let signatures: Vec<Signature> = items.iter().map(|i| *i.signature).collect();
    let keys: Vec<VerifyingKey> = items.iter().map(|i| *i.key).collect();
    let all = Span {
        messages: &messages,
        signatures: &signatures,
        keys: &keys,
        offset: 0,
    };
    if all.len() > 1 && all.batch_holds(&mut ok, &mut stats) {
        return (ok, stats);
    }
    let chunks = if all.len() > RECHECK_CHUNK {
        all.chunks(RECHECK_CHUNK)
    } else {
        vec![all]
    };
    for chunk in chunks {
        // A lone chunk equal to the whole batch already failed its batch check.
        let checked_already = chunk.len() == items.len();
        if checked_already || chunk.len() == 1 || !chunk.batch_holds(&mut ok, &mut stats) {
            chunk.singly(&mut ok, &mut stats);
        }
    }
    (ok, stats)
}

/// A run of consecutive items of one [`verify_batch`] call.
#[derive(Clone, Copy)]
struct Span<'a> {
    messages: &'a [&'a [u8]],
    signatures: &'a [Signature],
    keys: &'a [VerifyingKey],
    offset: usize,
}

impl<'a> Span<'a> {
    fn len(&self) -> usize {
        self.messages.len()
    }

    fn chunks(&self, size: usize) -> Vec<Span<'a>> {
        (0..self.len())
            .step_by(size)
            .map(|start| {
                let end = (start + size).min(self.len());
                Span {
                    messages: &self.messages[start..end],
                    signatures: &self.signatures[start..end],
                    keys: &self.keys[start..end],
                    offset: self.offset + start,
                }
            })
            .collect()
    }

    /// One batch check; when the equation holds, marks the items valid unless a signature's `R` is of
    /// small order (refused by the strict rules, which the batch equation does not cover; canonical
    /// `S` is checked by dalek).
    fn batch_holds(&self, ok: &mut [bool], stats: &mut BatchStats) -> bool {
        stats.batch_checks += 1;
        if ed25519_dalek::verify_batch(self.messages, self.signatures, self.keys).is_err() {
            return false;
        }
        for (i, sig) in self.signatures.iter().enumerate() {
            ok[self.offset + i] = !r_is_small_order(sig);
        }
        true
    }

    fn singly(&self, ok: &mut [bool], stats: &mut BatchStats) {
        for i in 0..self.len() {
            stats.single_checks += 1;
            ok[self.offset + i] = self.keys[i]
                .verify_strict(self.messages[i], &self.signatures[i])
                .is_ok();
        }
    }
}

/// True when the signature's `R` is an encoding of a point of small order (refused by
/// `verify_strict`). A table look-up: decompressing `R` again would cost about a fifth of a verification.
fn r_is_small_order(signature: &Signature) -> bool {
    small_order_encodings()
        .iter()
        .any(|e| e == signature.r_bytes())
}

/// Every 32-byte string that decompresses to one of the eight points of small order: the canonical
/// encodings of the 8-torsion points, the non-canonical `y + p` forms of `y = 0` and `y = 1` (the only
/// small-order `y` below 19), each with the sign bit clear or set.
pub fn small_order_encodings() -> &'static [[u8; 32]] {
    static SET: std::sync::OnceLock<Vec<[u8; 32]>> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        let mut set = Vec::new();
        let mut add = |mut e: [u8; 32]| {
            for sign in [0u8, 0x80] {
                e[31] = (e[31] & 0x7f) | sign;
                if !set.contains(&e) {
                    set.push(e);
                }
            }
        };
        for p in curve25519_dalek::constants::EIGHT_TORSION {
            add(p.compress().to_bytes());
        }
        // p = 2^255 - 19 (encodes y = 0) and p + 1 (encodes y = 1), little-endian.
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        add(p);
        p[0] = 0xee;
        add(p);
        set
    })
}

#[cfg(test)]
mod tests;
