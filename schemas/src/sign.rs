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

/// Below this size a failing batch is checked item by item instead of bisected further.
const BISECT_LEAF: usize = 2;

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
/// A valid batch costs one batch check. A failing one is bisected; an item is accepted only if a
/// batch containing it verified or it verified alone under the strict rules.
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
    bisect(&messages, &signatures, &keys, 0, &mut ok, &mut stats);
    (ok, stats)
}

fn bisect(
    messages: &[&[u8]],
    signatures: &[Signature],
    keys: &[VerifyingKey],
    offset: usize,
    ok: &mut [bool],
    stats: &mut BatchStats,
) {
    let n = messages.len();
    if n <= BISECT_LEAF {
        for i in 0..n {
            stats.single_checks += 1;
            ok[offset + i] = keys[i].verify_strict(messages[i], &signatures[i]).is_ok();
        }
        return;
    }
    stats.batch_checks += 1;
    if ed25519_dalek::verify_batch(messages, signatures, keys).is_ok() {
        // The batch equation holds; confirm the strict encoding rules the batch equation does not
        // cover (canonical S is checked by dalek; small-order R is refused here).
        for i in 0..n {
            ok[offset + i] = !r_is_small_order(&signatures[i]);
        }
        return;
    }
    let mid = n / 2;
    bisect(
        &messages[..mid],
        &signatures[..mid],
        &keys[..mid],
        offset,
        ok,
        stats,
    );
    bisect(
        &messages[mid..],
        &signatures[mid..],
        &keys[mid..],
        offset + mid,
        ok,
        stats,
    );
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
