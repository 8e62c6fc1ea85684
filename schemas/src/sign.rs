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

/// Cost per item of the batch equation over `n` signatures by `n` keys, relative to one single
/// equation (the double-scalar multiplication of [`Parts::equation_holds`]), with each signature's
/// parts already computed ([`Parts`]) and spans of [`Costs::pippenger_from`] points or more padded
/// to Pippenger's method: `(n, cost)` points, interpolated linearly, flat past the last.
/// `sign::tests::calibrate_msm_cost` (ignored) measures them.
struct Costs {
    msm: &'static [(usize, f64)],
    pippenger_from: usize,
}

/// curve25519-dalek's AVX-512 IFMA backend (AMD EPYC, 2026-12-05): single equation 13.3 µs, a
/// signature's parts 4.6 µs. Straus's method gets dearer per item from 32 items (its tables outgrow
/// the cache), Pippenger's is cheaper from about 36 items.
const COSTS_IFMA: Costs = Costs {
    msm: &[
        (1, 1.00),
        (2, 0.83),
        (4, 0.60),
        (8, 0.47),
        (16, 0.45),
        (24, 0.44),
        (32, 0.54),
        (40, 0.47),
        (48, 0.41),
        (64, 0.35),
        (96, 0.29),
        (128, 0.26),
        (192, 0.23),
        (256, 0.22),
        (512, 0.20),
    ],
    pippenger_from: 72,
};

/// The AVX2 backend (the same machine with IFMA left out of the build): single equation 33 µs,
/// parts 4.5 µs; Pippenger's method is cheaper from about 64 items. The serial backend uses these
/// too.
const COSTS_AVX2: Costs = Costs {
    msm: &[
        (1, 1.00),
        (2, 0.69),
        (4, 0.49),
        (8, 0.38),
        (16, 0.34),
        (24, 0.34),
        (32, 0.37),
        (48, 0.36),
        (64, 0.39),
        (96, 0.33),
        (128, 0.31),
        (192, 0.28),
        (256, 0.26),
        (512, 0.23),
    ],
    pippenger_from: 128,
};

/// Where curve25519-dalek's `vartime_multiscalar_mul` switches from Straus's method to
/// Pippenger's, in points.
const DALEK_PIPPENGER_FROM: usize = 190;

/// The cost model of the backend this process runs on.
fn costs() -> &'static Costs {
    if backend() == "avx512ifma" {
        &COSTS_IFMA
    } else {
        &COSTS_AVX2
    }
}

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
    Parts::of(key, message, signature).is_some_and(|p| p.equation_holds(&key.to_edwards()))
}

/// What the equation needs of one signature, computed once however often the signature is checked:
/// `R` decompressed (any encoding of a point, as ZIP-215 allows; the square root of its
/// decompression is the largest single cost of a verification), `S` and the challenge `k`.
struct Parts {
    r: EdwardsPoint,
    s: Scalar,
    k: Scalar,
}

impl Parts {
    /// `None` when the signature is refused without any equation: `R` of small order, `R` no point,
    /// or `S` not canonical (not below the group order).
    fn of(key: &VerifyingKey, message: &[u8], signature: &Signature) -> Option<Parts> {
        if r_is_small_order(signature) {
            return None;
        }
        let r = CompressedEdwardsY(*signature.r_bytes()).decompress()?;
        let s = Option::from(Scalar::from_canonical_bytes(*signature.s_bytes()))?;
        Some(Parts {
            r,
            s,
            k: challenge(key, message, signature),
        })
    }

    /// The single equation `[8]R = [8]([S]B - [k]A)` for the key point `a`.
    fn equation_holds(&self, a: &EdwardsPoint) -> bool {
        let r_expected = EdwardsPoint::vartime_double_scalar_mul_basepoint(&self.k, &-a, &self.s);
        (self.r - r_expected).mul_by_cofactor().is_identity()
    }
}

/// The challenge `k = H(R || A || M)`, with `A` as the key's bytes (as sent, not re-encoded).
fn challenge(key: &VerifyingKey, message: &[u8], signature: &Signature) -> Scalar {
    let mut h = Sha512::new();
    h.update(signature.r_bytes());
    h.update(key.as_bytes());
    h.update(message);
    Scalar::from_bytes_mod_order_wide(&h.finalize().into())
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
    /// Of those, the items refused before any equation (`R` of small order or no point, `S` not
    /// canonical): they cost nothing to find, so the share of bad signatures the planner expects
    /// ([`BadShare::observe_batch`]) leaves them out.
    pub refused_unchecked: usize,
}

/// Verifies every item; `result[i]` tells whether item `i` is valid. Expects no bad signatures: a
/// valid batch costs one batch check. See [`verify_batch_expecting`].
pub fn verify_batch(items: &[BatchItem<'_>]) -> (Vec<bool>, BatchStats) {
    verify_batch_expecting(items, 0.0)
}

/// Verifies every item, expecting each signature to be bad with probability `bad_share`.
///
/// Each signature's [`Parts`] are computed once. The items are then checked in batches of the size
/// with the least expected cost ([`plan_chunk`]): the whole run when bad signatures are rare,
/// smaller batches as they get common, one by one when most are bad. A failing batch is searched by
/// halves: the batch equation is a sum over its items, so with the same random weights a half's
/// value is the whole's minus the other half's, and each step of the search evaluates one half only.
/// An item is accepted only if an evaluated batch containing it held, or it held alone, under the
/// same rule ([`accepts`]), so the expectation changes the cost, never a verdict.
pub fn verify_batch_expecting(items: &[BatchItem<'_>], bad_share: f64) -> (Vec<bool>, BatchStats) {
    let mut ok = vec![false; items.len()];
    let mut stats = BatchStats::default();
    let mut message = Vec::new();
    let mut batch = Batch::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        message.clear();
        message.extend_from_slice(DOMAIN_PREFIX);
        message.extend_from_slice(item.payload);
        match Parts::of(item.key, &message, item.signature) {
            Some(parts) => batch.push(i, item.key, parts),
            None => stats.refused_unchecked += 1,
        }
    }
    let share = if bad_share.is_finite() {
        bad_share.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let live = batch.len();
    if live > 0 {
        let size = plan_chunk(live, share);
        for start in (0..live).step_by(size) {
            let span = start..(start + size).min(live);
            if span.len() == 1 {
                batch.single(span.start, &mut ok, &mut stats);
            } else {
                let value = batch.value(span.clone(), &mut stats);
                batch.search(span, value, &mut ok, &mut stats);
            }
        }
    }
    stats.bad = ok.iter().filter(|v| !**v).count();
    (ok, stats)
}

/// The batch size with the least expected cost per item for a run of `len` items, each bad with
/// probability `share`. Chunks are even: `len` split into `ceil(len / size)` parts.
fn plan_chunk(len: usize, share: f64) -> usize {
    let even = |size: usize| len.div_ceil(len.div_ceil(size));
    CHUNK_LADDER
        .iter()
        .map(|&s| even(s))
        .chain(std::iter::once(len))
        .filter(|&c| c >= 1 && c <= len)
        .map(|c| (c, expected_cost(costs(), c, share)))
        .min_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
        .map_or(1, |(c, _)| c)
}

/// Expected cost per item (in single equations) of checking items in batches of `c`, each bad with
/// probability `share`: the batch equation, plus the search by halves for each bad item (one half
/// evaluated per step, a pair decided by one or two single equations), `c × share` of them on
/// average (their paths share the first steps; the model leaves that out).
fn expected_cost(costs: &Costs, c: usize, share: f64) -> f64 {
    if c <= 1 {
        return 1.0;
    }
    let mut search = 0.0;
    let mut n = c;
    while n > 2 {
        let half = n / 2;
        search += half as f64 * msm_cost(costs, half);
        n -= half;
    }
    if n == 2 {
        search += 1.5;
    }
    msm_cost(costs, c) + share * search
}

/// The batch equation's cost per item at `n` items.
fn msm_cost(costs: &Costs, n: usize) -> f64 {
    let table = costs.msm;
    let mut prev = table[0];
    for &(size, cost) in table {
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

    /// Folds in one [`verify_batch_expecting`] call over `items` items: the share among the items
    /// that reached an equation, which is the share the planner's model is about.
    pub fn observe_batch(&self, stats: &BatchStats, items: usize) {
        self.observe(
            stats.bad.saturating_sub(stats.refused_unchecked),
            items.saturating_sub(stats.refused_unchecked),
        );
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

/// The items of one [`verify_batch_expecting`] call that need an equation, with their parts and
/// random weights. The batch equation over a span of them is
/// `V = [-Σ z_i S_i]B + Σ [z_i]R_i + Σ_A [Σ_{i by A} z_i k_i]A`, and every item of the span holds
/// exactly when `[8]V = 0` (but with probability about 2^-128 over the `z_i`, 128-bit random
/// weights drawn for the call): the terms of one key are merged into one point of the multiscalar
/// multiplication (a device signs many readings of a batch), so `n` items by `m` keys need
/// `n + m + 1` points.
struct Batch {
    /// Each live item's index in the call's items.
    index: Vec<usize>,
    parts: Vec<Parts>,
    z: Vec<Scalar>,
    /// `z_i S_i` and `z_i k_i`.
    zs: Vec<Scalar>,
    zk: Vec<Scalar>,
    /// Each live item's key, as an index into `keys`.
    key_of: Vec<usize>,
    keys: Vec<EdwardsPoint>,
    key_slot: std::collections::HashMap<[u8; PUBLIC_KEY_LEN], usize>,
    /// Scratch of [`Batch::value`]: each key's merged weight, and the keys a span touched.
    key_weight: Vec<Option<Scalar>>,
    touched: Vec<usize>,
    rng: rand10::rngs::ThreadRng,
    /// [`Costs::pippenger_from`] of this process's backend.
    pippenger_from: usize,
}

impl Batch {
    fn with_capacity(n: usize) -> Self {
        Batch {
            index: Vec::with_capacity(n),
            parts: Vec::with_capacity(n),
            z: Vec::with_capacity(n),
            zs: Vec::with_capacity(n),
            zk: Vec::with_capacity(n),
            key_of: Vec::with_capacity(n),
            keys: Vec::new(),
            key_slot: std::collections::HashMap::with_capacity(n),
            key_weight: Vec::new(),
            touched: Vec::new(),
            rng: rand10::rng(),
            pippenger_from: costs().pippenger_from,
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn push(&mut self, index: usize, key: &VerifyingKey, parts: Parts) {
        use rand10::RngExt;
        let z = Scalar::from(self.rng.random::<u128>());
        let slot = *self.key_slot.entry(*key.as_bytes()).or_insert_with(|| {
            self.keys.push(key.to_edwards());
            self.key_weight.push(None);
            self.keys.len() - 1
        });
        self.index.push(index);
        self.zs.push(z * parts.s);
        self.zk.push(z * parts.k);
        self.z.push(z);
        self.parts.push(parts);
        self.key_of.push(slot);
    }

    /// `V` of the items in `span` (see [`Batch`]): one multiscalar multiplication.
    fn value(&mut self, span: std::ops::Range<usize>, stats: &mut BatchStats) -> EdwardsPoint {
        stats.batch_checks += 1;
        let mut b = Scalar::ZERO;
        self.touched.clear();
        for i in span.clone() {
            b -= self.zs[i];
            let slot = self.key_of[i];
            match &mut self.key_weight[slot] {
                Some(w) => *w += self.zk[i],
                w @ None => {
                    *w = Some(self.zk[i]);
                    self.touched.push(slot);
                }
            }
        }
        let weights: Vec<Scalar> = self
            .touched
            .iter()
            .map(|&k| self.key_weight[k].take().unwrap_or(Scalar::ZERO))
            .collect();
        // curve25519-dalek picks Straus's method below 190 points and Pippenger's from there; on
        // the vector backends Pippenger's is already cheaper from about `pippenger_from` points, so
        // such a span is padded to 190 with points of weight zero, which add nothing to the sum.
        let points = 1 + weights.len() + span.len();
        let pad = if points >= self.pippenger_from {
            DALEK_PIPPENGER_FROM.saturating_sub(points)
        } else {
            0
        };
        EdwardsPoint::vartime_multiscalar_mul(
            std::iter::once(&b)
                .chain(&weights)
                .chain(&self.z[span.clone()])
                .chain(std::iter::repeat_n(&Scalar::ZERO, pad)),
            std::iter::once(&ED25519_BASEPOINT_POINT)
                .chain(self.touched.iter().map(|&k| &self.keys[k]))
                .chain(self.parts[span].iter().map(|p| &p.r))
                .chain(std::iter::repeat_n(&ED25519_BASEPOINT_POINT, pad)),
        )
    }

    /// Decides live item `i` alone: the single equation, without weights.
    fn single(&self, i: usize, ok: &mut [bool], stats: &mut BatchStats) -> bool {
        stats.single_checks += 1;
        let holds = self.parts[i].equation_holds(&self.keys[self.key_of[i]]);
        ok[self.index[i]] = holds;
        holds
    }

    /// Decides every item of `span`, whose batch value is `value`.
    fn search(
        &mut self,
        span: std::ops::Range<usize>,
        value: EdwardsPoint,
        ok: &mut [bool],
        stats: &mut BatchStats,
    ) {
        if value.mul_by_cofactor().is_identity() {
            for i in span {
                ok[self.index[i]] = true;
            }
            return;
        }
        // At least one item of the span is bad.
        match span.len() {
            0 => {}
            1 => ok[self.index[span.start]] = false,
            2 => {
                // When the first holds, the second is the bad one.
                if self.single(span.start, ok, stats) {
                    ok[self.index[span.start + 1]] = false;
                } else {
                    self.single(span.start + 1, ok, stats);
                }
            }
            3 => {
                // The first alone: when it holds, its term of the value is of small order, which
                // the cofactor clears, so the other two keep the value.
                let rest = span.start + 1..span.end;
                if self.single(span.start, ok, stats) {
                    self.search(rest, value, ok, stats);
                } else {
                    let v = self.value(rest.clone(), stats);
                    self.search(rest, v, ok, stats);
                }
            }
            n => {
                let mid = span.start + n / 2;
                let left = self.value(span.start..mid, stats);
                self.search(span.start..mid, left, ok, stats);
                self.search(mid..span.end, value - left, ok, stats);
            }
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
