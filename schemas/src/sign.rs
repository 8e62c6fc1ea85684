//! Ed25519 signing and verification of reading payloads.
//!
//! The signed message is [`DOMAIN_PREFIX`] followed by the payload bytes exactly as sent. The prefix
//! keeps a Hexpulse signature from being valid in any other protocol that signs raw bytes with the
//! same key. Verification follows ZIP-215 (canonical `S`, the cofactored equation: ed25519-zebra's
//! rule, written here on curve25519-dalek, see [`accepts`]), the same rule alone and in a batch, and refuses a small-order `R`; keys of small order are refused
//! before any signature is looked at. Signing uses ed25519-dalek.
//!
//! [`verify_batch`] checks many signatures with one multiscalar multiplication. When a batch fails,
//! its items are checked again in smaller batches, and the items of a failing small batch one by one.
//! [`verify_batch_expecting`] takes the share of bad signatures the caller expects (ingest keeps a
//! running [`BadShare`]) and picks the first batch size from it: under a steady trickle of bad
//! signatures a large batch would almost always fail, and checking it first would only add its cost.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha512};

/// Domain separation prefix prepended to the payload before signing.
pub const DOMAIN_PREFIX: &[u8] = b"hexpulse/v1/reading\x00";

/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Cost per item of one batch check of `n` signatures, relative to one single (strict) verification:
/// `(n, cost)` points, interpolated linearly, flat past the last.
///
/// Measured on the build machine (ed25519-dalek 2, `verify_batch` against `verify_strict`): the cost
/// falls quickly up to 8 items, is flat near 0.47 until about 95 items (where curve25519-dalek switches
/// from Straus to Pippenger for the 2n + 1 points of the equation), and falls again after.
const BATCH_COST: &[(usize, f64)] = &[
    (1, 1.00),
    (2, 0.81),
    (4, 0.62),
    (8, 0.50),
    (16, 0.47),
    (96, 0.46),
    (128, 0.40),
    (256, 0.36),
    (512, 0.34),
];

/// Batch sizes the planner considers, besides the whole run.
const CHUNK_LADDER: &[usize] = &[1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256];

/// Why a public key is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// Not [`PUBLIC_KEY_LEN`] bytes long.
    #[error("public key must be {PUBLIC_KEY_LEN} bytes, got {0}")]
    Length(usize),
    /// The bytes decode to no point of the curve.
    #[error("public key is not a valid Ed25519 point")]
    NotAPoint,
    /// A point of small order, which would let any signature verify.
    #[error("public key is of small order (weak)")]
    Weak,
}

/// Why a signature is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// Not [`SIGNATURE_LEN`] bytes long.
    #[error("signature must be {SIGNATURE_LEN} bytes, got {0}")]
    Length(usize),
    /// It does not verify for the key and payload.
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

/// Verifies one signature over `DOMAIN_PREFIX || payload`, under the rule every verification here
/// follows, one item or a batch (see [`accepts`]).
pub fn verify(
    key: &VerifyingKey,
    payload: &[u8],
    signature: &Signature,
) -> Result<(), SignatureError> {
    if accepts(key, &signing_message(payload), signature) {
        Ok(())
    } else {
        Err(SignatureError::Invalid)
    }
}

/// The acceptance rule: ZIP-215's (canonical `S`, `R` any encoding that decompresses, the
/// cofactored equation `[8][S]B = [8]R + [8][k]A` with `k = H(R || A || M)`), which a batch check
/// and a single check share, and `R` not of small order (our own refusal, made the same way in
/// both). Keys of small order are refused when parsed ([`parse_public_key`]). ed25519-dalek's
/// `verify_strict` checks the cofactorless equation and its batch a randomised cofactorless one, so
/// a signature whose `R` has a small-order component failed alone and passed some batches,
/// depending on its neighbours.
///
/// The equations are written here on curve25519-dalek, as ed25519-zebra writes them, because
/// zebra's API takes a key as bytes and decompresses it again for every check: with its per-key
/// bookkeeping, about 40% of a batch's cost per signature (load-tests/RESULTS.md). Here the key's
/// point comes from the [`VerifyingKey`], decompressed once when the registry parsed it.
/// ed25519-zebra stays the reference: the tests compare every verdict with its single and batch
/// verifiers (`sign/tests.rs`).
fn accepts(key: &VerifyingKey, message: &[u8], signature: &Signature) -> bool {
    if r_is_small_order(signature) {
        return false;
    }
    let Some((r, s)) = signature_parts(signature) else {
        return false;
    };
    let k = challenge(key, message, signature);
    let r_expected = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &-key.to_edwards(), &s);
    (r - r_expected).mul_by_cofactor().is_identity()
}

/// `R` decompressed (any encoding of a point, as ZIP-215 allows) and `S`, which must be canonical
/// (below the group order); `None` when either is not.
fn signature_parts(signature: &Signature) -> Option<(EdwardsPoint, Scalar)> {
    let r = CompressedEdwardsY(*signature.r_bytes()).decompress()?;
    let s = Option::from(Scalar::from_canonical_bytes(*signature.s_bytes()))?;
    Some((r, s))
}

/// The challenge `k = H(R || A || M)`, with `A` as the key's bytes (as sent, not re-encoded).
fn challenge(key: &VerifyingKey, message: &[u8], signature: &Signature) -> Scalar {
    let mut h = Sha512::new();
    h.update(signature.r_bytes());
    h.update(key.as_bytes());
    h.update(message);
    Scalar::from_bytes_mod_order_wide(&h.finalize().into())
}

/// One batch check of ZIP-215's equation over the items whose `R` is not of small order (those are
/// refused without it): true when every one of them holds.
///
/// With a random 128-bit `z_i` per item, the batch holds when
/// `[8]([-Σ z_i S_i]B + Σ [z_i]R_i + Σ_A [Σ_{i by A} z_i k_i]A) = 0`: the terms of one key are
/// merged into one point of the multiscalar multiplication (a device signs many readings of a
/// batch), so `n` items by `m` keys need `n + m + 1` points.
fn batch_holds_zip215(keys: &[VerifyingKey], messages: &[&[u8]], signatures: &[Signature]) -> bool {
    use rand10::RngExt;
    let mut rng = rand10::rng();
    let n = signatures.len();
    let mut b_coeff = Scalar::ZERO;
    let (mut r_coeffs, mut r_points) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut a_coeffs, mut a_points) = (Vec::<Scalar>::new(), Vec::<EdwardsPoint>::new());
    let mut key_slot: std::collections::HashMap<&[u8; PUBLIC_KEY_LEN], usize> =
        std::collections::HashMap::with_capacity(n);
    for ((key, message), signature) in keys.iter().zip(messages).zip(signatures) {
        if r_is_small_order(signature) {
            continue;
        }
        let Some((r, s)) = signature_parts(signature) else {
            return false;
        };
        let z = Scalar::from(rng.random::<u128>());
        b_coeff -= z * s;
        r_coeffs.push(z);
        r_points.push(r);
        let slot = *key_slot.entry(key.as_bytes()).or_insert_with(|| {
            a_points.push(key.to_edwards());
            a_coeffs.push(Scalar::ZERO);
            a_points.len() - 1
        });
        a_coeffs[slot] += z * challenge(key, message, signature);
    }
    let sum = EdwardsPoint::vartime_multiscalar_mul(
        std::iter::once(&b_coeff).chain(&a_coeffs).chain(&r_coeffs),
        std::iter::once(&ED25519_BASEPOINT_POINT)
            .chain(&a_points)
            .chain(&r_points),
    );
    sum.mul_by_cofactor().is_identity()
}

/// One item of a batch verification.
#[derive(Clone, Copy, Debug)]
pub struct BatchItem<'a> {
    /// The device's public key.
    pub key: &'a VerifyingKey,
    /// The signed payload bytes (without the domain prefix, which verification adds).
    pub payload: &'a [u8],
    /// The signature to check.
    pub signature: &'a Signature,
}

/// Statistics of one [`verify_batch`] call, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Batch equations evaluated (1 when everything is valid).
    pub batch_checks: usize,
    /// Single verifications.
    pub single_checks: usize,
    /// Items found bad.
    pub bad: usize,
}

/// Verifies every item; `result[i]` tells whether item `i` is valid. Expects no bad signatures: a
/// valid batch costs one batch check. See [`verify_batch_expecting`].
pub fn verify_batch(items: &[BatchItem<'_>]) -> (Vec<bool>, BatchStats) {
    verify_batch_expecting(items, 0.0)
}

/// Verifies every item, expecting each signature to be bad with probability `bad_share`.
///
/// The items are checked in batches of the size with the least expected cost ([`BATCH_COST`]): the
/// whole run when bad signatures are rare, smaller batches as they get common. A failing batch is
/// checked again the same way, now expecting at least one bad item in it, down to single
/// verifications. An item is accepted only if a batch containing it verified (and its `R` is not of
/// small order) or it verified alone, under the same rule ([`accepts`]), so the expectation changes
/// the cost, never a verdict.
pub fn verify_batch_expecting(items: &[BatchItem<'_>], bad_share: f64) -> (Vec<bool>, BatchStats) {
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
    let share = if bad_share.is_finite() {
        bad_share.clamp(0.0, 1.0)
    } else {
        0.0
    };
    all.check(share, false, &mut ok, &mut stats);
    stats.bad = ok.iter().filter(|v| !**v).count();
    (ok, stats)
}

/// The batch size with the least expected cost per item for a run of `len` items, each bad with
/// probability `share`; never `len` itself when `failed` (the run already failed as one batch).
/// Chunks are even: `len` split into `ceil(len / size)` parts.
fn plan_chunk(len: usize, share: f64, failed: bool) -> usize {
    let even = |size: usize| len.div_ceil(len.div_ceil(size));
    CHUNK_LADDER
        .iter()
        .map(|&s| even(s))
        .chain(std::iter::once(len))
        .filter(|&c| c <= len && !(failed && c == len))
        .map(|c| (c, expected_cost(c, share)))
        .min_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
        .map_or(1, |(c, _)| c)
}

/// Expected cost per item (in single verifications) of checking items in batches of `c`, each bad
/// with probability `share`: the batch check, plus, when the batch fails (at least one bad item), the
/// cost of finding the bad items. That is a single check of each item for a batch of up to 8; for a
/// larger one, checks in batches of 8 and single checks of the failing ones' items, where a failed
/// batch of `c` holds at least one bad item in `c`.
fn expected_cost(c: usize, share: f64) -> f64 {
    let fails = |n: usize, p: f64| 1.0 - (1.0 - p).powi(n as i32);
    if c <= 1 {
        return 1.0;
    }
    let recheck = if c <= 8 {
        1.0
    } else {
        batch_cost(8) + fails(8, share.max(1.0 / c as f64))
    };
    batch_cost(c) + fails(c, share) * recheck
}

/// [`BATCH_COST`] at `n`.
fn batch_cost(n: usize) -> f64 {
    let mut prev = BATCH_COST[0];
    for &(size, cost) in BATCH_COST {
        if n <= size {
            if size == prev.0 {
                return cost;
            }
            let t = (n - prev.0) as f64 / (size - prev.0) as f64;
            return prev.1 + t * (cost - prev.1);
        }
        prev = (size, cost);
    }
    prev.1
}

/// A running estimate of the share of bad signatures among items verified, shared between threads
/// (an exponentially weighted mean over about the last [`BadShare::WINDOW`] items). Lost updates
/// between racing threads only make the estimate a little slower to move.
#[derive(Debug, Default)]
pub struct BadShare(std::sync::atomic::AtomicU64);

impl BadShare {
    /// Items over which the estimate averages.
    pub const WINDOW: f64 = 5000.0;

    /// An estimate of zero.
    pub const fn new() -> Self {
        BadShare(std::sync::atomic::AtomicU64::new(0))
    }

    /// The current estimate, in `[0, 1]`.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Folds in one verification of `total` items of which `bad` failed.
    pub fn observe(&self, bad: usize, total: usize) {
        if total == 0 {
            return;
        }
        let weight = total as f64 / (total as f64 + Self::WINDOW);
        let seen = bad as f64 / total as f64;
        let old = self.get();
        let new = old + weight * (seen - old);
        self.0.store(
            new.clamp(0.0, 1.0).to_bits(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
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

    fn chunks(&self, size: usize) -> impl Iterator<Item = Span<'a>> + '_ {
        (0..self.len()).step_by(size).map(move |start| {
            let end = (start + size).min(self.len());
            Span {
                messages: &self.messages[start..end],
                signatures: &self.signatures[start..end],
                keys: &self.keys[start..end],
                offset: self.offset + start,
            }
        })
    }

    /// Decides every item of the span (see [`verify_batch_expecting`]); `failed` when the span
    /// already failed as one batch.
    fn check(&self, share: f64, failed: bool, ok: &mut [bool], stats: &mut BatchStats) {
        if self.len() == 1 {
            self.singly(ok, stats);
            return;
        }
        // A failed batch holds at least one bad item.
        let share = if failed {
            share.max(1.0 / self.len() as f64)
        } else {
            share
        };
        let size = plan_chunk(self.len(), share, failed);
        if size == self.len() {
            if !self.batch_holds(ok, stats) {
                self.check(share, true, ok, stats);
            }
        } else if size == 1 {
            self.singly(ok, stats);
        } else {
            for chunk in self.chunks(size) {
                chunk.check(share, false, ok, stats);
            }
        }
    }

    /// One batch check; when it holds, marks the items valid, except those whose `R` is of small
    /// order (refused by [`accepts`] too, and left out of the equation).
    fn batch_holds(&self, ok: &mut [bool], stats: &mut BatchStats) -> bool {
        stats.batch_checks += 1;
        if !batch_holds_zip215(self.keys, self.messages, self.signatures) {
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
            ok[self.offset + i] = accepts(&self.keys[i], self.messages[i], &self.signatures[i]);
        }
    }
}

/// True when the signature's `R` is an encoding of a point of small order (refused here; ZIP-215
/// alone would accept it). A table look-up: decompressing `R` again would cost about a fifth of a verification.
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

/// The curve25519-dalek backend that verification runs on here: `"avx512ifma"`, `"avx2"` or
/// `"serial"`. curve25519-dalek picks it once per process from the CPU's features, among the
/// backends the build includes: the AVX-512 IFMA one only with `--cfg
/// curve25519_dalek_backend="avx512"` (`.cargo/config.toml`), AVX2 on any 64-bit x86 build that is
/// not forced to `serial`. This follows the same rule (curve25519-dalek's `get_selected_backend`),
/// which the library does not expose.
pub fn backend() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(curve25519_dalek_backend = "avx512")
            && std::arch::is_x86_feature_detected!("avx512ifma")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            return "avx512ifma";
        }
        if !cfg!(any(
            curve25519_dalek_backend = "serial",
            curve25519_dalek_backend = "fiat"
        )) && std::arch::is_x86_feature_detected!("avx2")
        {
            return "avx2";
        }
    }
    "serial"
}

pub mod rates;

#[cfg(test)]
mod tests;
