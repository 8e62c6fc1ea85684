use super::*;

fn key(i: u8) -> SigningKey {
    signing_key_from_seed([i; 32])
}

#[test]
fn sign_then_verify() {
    let k = key(1);
    let sig = Signature::from_bytes(&sign(&k, b"hello"));
    assert_eq!(verify(&k.verifying_key(), b"hello", &sig), Ok(()));
    assert_eq!(
        verify(&k.verifying_key(), b"hellO", &sig),
        Err(SignatureError::Invalid)
    );
    // The prefix is part of the message: a plain signature over the payload does not verify.
    let plain = k.sign(b"hello");
    assert_eq!(
        verify(&k.verifying_key(), b"hello", &plain),
        Err(SignatureError::Invalid)
    );
}

#[test]
fn weak_and_malformed_keys_are_refused() {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert_eq!(parse_public_key(&identity), Err(KeyError::Weak));
    assert_eq!(parse_public_key(&[1u8; 31]), Err(KeyError::Length(31)));
    assert!(parse_public_key(key(3).verifying_key().as_bytes()).is_ok());
}

/// `n` signed items; the items at `bad` carry a signature by another key.
struct Fixture {
    vks: Vec<VerifyingKey>,
    payloads: Vec<Vec<u8>>,
    sigs: Vec<Signature>,
}

impl Fixture {
    fn new(n: usize, bad: &[usize]) -> Self {
        let keys: Vec<SigningKey> = (0..n).map(|i| key((i % 251) as u8)).collect();
        let vks = keys.iter().map(|k| k.verifying_key()).collect();
        let payloads: Vec<Vec<u8>> = (0..n).map(|i| (i as u32).to_le_bytes().repeat(5)).collect();
        let sigs = (0..n)
            .map(|i| {
                let signer = if bad.contains(&i) {
                    (i + 1) % 251
                } else {
                    i % 251
                };
                Signature::from_bytes(&sign(&key(signer as u8), &payloads[i]))
            })
            .collect();
        Fixture {
            vks,
            payloads,
            sigs,
        }
    }

    fn items(&self) -> Vec<BatchItem<'_>> {
        (0..self.sigs.len())
            .map(|i| BatchItem {
                key: &self.vks[i],
                payload: &self.payloads[i],
                signature: &self.sigs[i],
            })
            .collect()
    }
}

fn assert_verdicts(ok: &[bool], bad: &[usize]) {
    for (i, v) in ok.iter().enumerate() {
        assert_eq!(*v, !bad.contains(&i), "item {i}");
    }
}

/// Batch equations the search by halves may evaluate for `bad` bad items among `n` split in chunks
/// of `plan_chunk(n, share)`: each chunk once, then one half per step on each bad item's path.
fn search_bound(n: usize, share: f64, bad: usize) -> usize {
    let chunk = plan_chunk(n, share);
    n.div_ceil(chunk) + bad * (usize::BITS - chunk.leading_zeros()) as usize
}

#[test]
fn batch_finds_exactly_the_bad_items() {
    let bad = [3usize, 4, 20, 36];
    let f = Fixture::new(37, &bad);
    let (ok, stats) = verify_batch(&f.items());
    assert_verdicts(&ok, &bad);
    assert_eq!(stats.bad, 4);
    // Each bad item is found by halves, and decided alone at most three times (in its last three).
    assert!(stats.batch_checks <= search_bound(37, 0.0, 4), "{stats:?}");
    assert!(stats.single_checks <= 3 * 4, "{stats:?}");

    // One bad item among 50.
    let f = Fixture::new(50, &[36]);
    let (ok, stats) = verify_batch(&f.items());
    assert_verdicts(&ok, &[36]);
    assert!(stats.batch_checks <= search_bound(50, 0.0, 1), "{stats:?}");
    assert!(stats.single_checks <= 3, "{stats:?}");

    // A clean run is one batch check per planned chunk (the whole run, or a few where the backend's
    // cheapest batch is smaller), and never needs a single check.
    for n in [2, 33, 200] {
        let f = Fixture::new(n, &[]);
        for share in [0.0, 0.001] {
            let (ok, stats) = verify_batch_expecting(&f.items(), share);
            assert!(ok.iter().all(|v| *v));
            assert_eq!(
                stats,
                BatchStats {
                    batch_checks: n.div_ceil(plan_chunk(n, share)),
                    single_checks: 0,
                    bad: 0,
                    refused_unchecked: 0,
                },
                "{n} {share}"
            );
        }
    }
}

/// A [`Batch`] of `items`, every one with parts.
fn batch_of(items: &[BatchItem<'_>]) -> Batch {
    let mut batch = Batch::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let message = signing_message(item.payload);
        let parts = Parts::of(item.key, &message, item.signature).expect("parts");
        batch.push(i, item.key, parts);
    }
    batch
}

#[test]
fn the_search_decides_a_span_from_the_half_it_evaluated() {
    // Two items, the second bad: the first holds alone, so the second is bad without its own check.
    let f = Fixture::new(2, &[1]);
    let mut batch = batch_of(&f.items());
    let (mut ok, mut stats) = (vec![true; 2], BatchStats::default());
    let value = batch.value(0..2, &mut stats);
    batch.search(0..2, value, &mut ok, &mut stats);
    assert_eq!(ok, [true, false]);
    assert_eq!((stats.batch_checks, stats.single_checks), (1, 1));
    // Eight items, item 5 bad: the whole, then one half per step (0..4 holds, so 4..8 fails; 4..6
    // fails, so 6..8 holds), then the pair (4 holds alone, so 5 is the bad one).
    let f = Fixture::new(8, &[5]);
    let mut batch = batch_of(&f.items());
    let (mut ok, mut stats) = (vec![false; 8], BatchStats::default());
    let value = batch.value(0..8, &mut stats);
    batch.search(0..8, value, &mut ok, &mut stats);
    assert_verdicts(&ok, &[5]);
    assert_eq!((stats.batch_checks, stats.single_checks), (3, 1));
}

#[test]
fn signatures_refused_before_any_equation_stay_out_of_the_batch() {
    // A non-canonical S and an R that is no point: refused when their parts are computed, so the
    // batch of the others holds at once.
    let f = Fixture::new(20, &[]);
    let mut sigs = f.sigs.clone();
    let mut s_big = sigs[4].to_bytes();
    s_big[63] |= 0xf0;
    sigs[4] = Signature::from_bytes(&s_big);
    let mut r_bad = sigs[9].to_bytes();
    r_bad[..32].copy_from_slice(&[0xffu8; 32]);
    r_bad[0] = 0xe0; // y = 2^255 - 32: not on the curve
    sigs[9] = Signature::from_bytes(&r_bad);
    assert!(
        CompressedEdwardsY(*sigs[9].r_bytes())
            .decompress()
            .is_none()
    );
    let items: Vec<BatchItem<'_>> = (0..20)
        .map(|i| BatchItem {
            key: &f.vks[i],
            payload: &f.payloads[i],
            signature: &sigs[i],
        })
        .collect();
    let (ok, stats) = verify_batch(&items);
    assert_verdicts(&ok, &[4, 9]);
    assert_eq!(
        (stats.batch_checks, stats.single_checks),
        (1, 0),
        "{stats:?}"
    );
}

#[test]
fn the_plan_follows_the_expected_share_of_bad_signatures() {
    // None expected: the chunk cheapest per item, which is the whole run from 96 items on every
    // backend (below, a backend's Straus's method may be cheaper on a smaller chunk).
    for len in [200, 1000] {
        assert_eq!(plan_chunk(len, 0.0), len);
    }
    for len in [2, 17, 50, 95] {
        let c = plan_chunk(len, 0.0);
        assert!(
            c <= len && msm_cost(costs(), c) <= msm_cost(costs(), len),
            "{len}: {c}"
        );
    }
    // One in a hundred: a batch of 200 would fail 87% of the time; smaller chunks instead.
    let c = plan_chunk(200, 0.01);
    assert!((8..=100).contains(&c), "{c}");
    // All bad: one by one.
    assert_eq!(plan_chunk(200, 1.0), 1);
    for costs in [&COSTS_IFMA, &COSTS_AVX2] {
        // The cost model: a batch item never dearer than a single equation, the largest batches
        // the cheapest per item.
        let cheapest = msm_cost(costs, 512);
        for n in 1..600 {
            let c = msm_cost(costs, n);
            assert!(c > 0.0 && c <= 1.0 && c >= cheapest, "{n}: {c}");
        }
        // And a chunk's expected cost grows with the share of bad signatures.
        for c in [2, 8, 64, 200] {
            assert!(expected_cost(costs, c, 0.0) < expected_cost(costs, c, 0.01));
            assert!(expected_cost(costs, c, 0.01) < expected_cost(costs, c, 0.2));
        }
    }
}

#[test]
fn expecting_bad_signatures_checks_less_when_they_come() {
    // 200 items, two bad, as ingest sees them under a 1% share of bad signatures.
    let bad = [57usize, 141];
    let f = Fixture::new(200, &bad);
    let cost = |s: &BatchStats| s.single_checks as f64 + 0.5 * s.batch_checks as f64;
    let (ok0, blind) = verify_batch(&f.items());
    let (ok1, expecting) = verify_batch_expecting(&f.items(), 0.01);
    assert_verdicts(&ok0, &bad);
    assert_verdicts(&ok1, &bad);
    assert!(expecting.single_checks <= 6, "{expecting:?}");
    assert!(blind.single_checks <= 6, "{blind:?}");
    // Blind: the failed batch of 200, then halves of it; expecting: smaller first batches.
    assert!(
        blind.batch_checks < expecting.batch_checks || cost(&blind) >= cost(&expecting),
        "{blind:?} {expecting:?}"
    );
}

/// Prints the measurements of [`Costs`] on this machine: the batch equation's cost per item at each
/// size over the single equation's, with Straus's method and with Pippenger's (a span padded to
/// 190 points). Run it with
/// `cargo test --release -p hexpulse-schemas calibrate_msm_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn calibrate_msm_cost() {
    use std::time::{Duration, Instant};
    // Every item by its own key, as in ingest's batches from many devices.
    let n_max = 512;
    let signers: Vec<SigningKey> = (0..n_max)
        .map(|i| {
            signing_key_from_seed([
                (i % 256) as u8,
                (i / 256) as u8,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
                7,
            ])
        })
        .collect();
    let vks: Vec<VerifyingKey> = signers.iter().map(SigningKey::verifying_key).collect();
    let payloads: Vec<Vec<u8>> = (0..n_max)
        .map(|i| (i as u32).to_le_bytes().repeat(5))
        .collect();
    let sigs: Vec<Signature> = (0..n_max)
        .map(|i| Signature::from_bytes(&sign(&signers[i], &payloads[i])))
        .collect();
    let items: Vec<BatchItem<'_>> = (0..n_max)
        .map(|i| BatchItem {
            key: &vks[i],
            payload: &payloads[i],
            signature: &sigs[i],
        })
        .collect();
    let mut batch = batch_of(&items);
    let mut stats = BatchStats::default();
    let per_item = |work: &mut dyn FnMut() -> usize| {
        let (mut items, t) = (0usize, Instant::now());
        while t.elapsed() < Duration::from_millis(400) {
            items += work();
        }
        t.elapsed().as_secs_f64() / items as f64
    };
    let mut ok = vec![false; n_max];
    let single = per_item(&mut || {
        for i in 0..64 {
            assert!(batch.single(i, &mut ok, &mut stats));
        }
        64
    });
    let parts = per_item(&mut || {
        for item in &items[..64] {
            let message = signing_message(item.payload);
            assert!(Parts::of(item.key, &message, item.signature).is_some());
        }
        64
    });
    println!(
        "backend {}: single equation {:.2} µs, parts {:.2} µs",
        backend(),
        single * 1e6,
        parts * 1e6
    );
    println!("    (items, Straus, Pippenger)");
    for n in [1, 2, 4, 8, 16, 24, 32, 40, 48, 64, 96, 128, 192, 256, 512] {
        let mut by_method = [0.0; 2];
        for (method, from) in [usize::MAX, 0].into_iter().enumerate() {
            batch.pippenger_from = from;
            by_method[method] = per_item(&mut || {
                let mut done = 0;
                while done + n <= n_max {
                    let v = batch.value(done..done + n, &mut stats);
                    assert!(v.mul_by_cofactor().is_identity());
                    done += n;
                }
                done
            }) / single;
        }
        println!("    ({n}, {:.2}, {:.2}),", by_method[0], by_method[1]);
    }
}

#[test]
fn the_expected_share_leaves_out_signatures_refused_before_any_equation() {
    // 200 items: item 3 signed by another key (found by the equations), items 10 and 20 with an
    // `R` of small order and item 30 with an `S` that is not canonical (refused before any).
    let mut f = Fixture::new(200, &[3]);
    for i in [10, 20] {
        let mut b = f.sigs[i].to_bytes();
        b[..32].copy_from_slice(&small_order_encodings()[i % 8]);
        f.sigs[i] = Signature::from_bytes(&b);
    }
    let mut b = f.sigs[30].to_bytes();
    b[32..].copy_from_slice(&[0xff; 32]);
    f.sigs[30] = Signature::from_bytes(&b);
    let (ok, stats) = verify_batch(&f.items());
    assert_verdicts(&ok, &[3, 10, 20, 30]);
    assert_eq!((stats.bad, stats.refused_unchecked), (4, 3), "{stats:?}");
    let share = BadShare::new();
    for _ in 0..200 {
        share.observe_batch(&stats, 200);
    }
    // One bad among the 197 that reached an equation, not four among 200.
    assert!(
        (share.get() - 1.0 / 197.0).abs() < 0.0005,
        "{}",
        share.get()
    );
}

#[test]
fn bad_share_estimate_moves_with_what_it_sees() {
    let e = BadShare::default();
    assert_eq!(e.get(), 0.0);
    for _ in 0..100 {
        e.observe(2, 200);
    }
    assert!((e.get() - 0.01).abs() < 0.001, "{}", e.get());
    e.observe(0, 0);
    for _ in 0..100 {
        e.observe(0, 200);
    }
    assert!(e.get() < 0.001, "{}", e.get());
    e.observe(1000, 1000);
    assert!(e.get() > 0.1 && e.get() <= 1.0, "{}", e.get());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    /// The expectation only changes the cost: verdicts are exact for any bad set and any share.
    #[test]
    fn verdicts_do_not_depend_on_the_expectation(
        n in 1usize..90,
        bad_bits in proptest::collection::vec(proptest::bool::weighted(0.1), 90),
        share in proptest::prop_oneof![proptest::strategy::Just(0.0), 0.0f64..1.0, proptest::strategy::Just(f64::NAN)],
    ) {
        let bad: Vec<usize> = (0..n).filter(|&i| bad_bits[i]).collect();
        let f = Fixture::new(n, &bad);
        let (ok, stats) = verify_batch_expecting(&f.items(), share);
        assert_verdicts(&ok, &bad);
        proptest::prop_assert_eq!(stats.bad, bad.len());
    }
}

#[test]
fn small_order_table_is_exactly_the_weak_encodings() {
    let table = small_order_encodings();
    // y = 1, -1, 0 and the two order-8 y values, with either sign bit, plus the non-canonical
    // p and p + 1 with either sign bit.
    assert_eq!(table.len(), 14);
    for e in table {
        let k = VerifyingKey::from_bytes(e).expect("decompresses");
        assert!(k.is_weak(), "{} is of small order", hex::encode(e));
    }
    // Honest signatures never have a small-order R.
    for i in 0..200u8 {
        let sig = Signature::from_bytes(&sign(&key(i), &[i; 9]));
        assert!(!r_is_small_order(&sig));
        let r = VerifyingKey::from_bytes(sig.r_bytes()).unwrap();
        assert!(!r.is_weak());
    }
}

/// A signature by `k` over `payload` whose `R` has a component of order 8: `R = [r]B + T`, with
/// `S = r + H(R || A || M)·a`. The cofactored equation holds; the cofactorless one does not.
fn mixed_order_signature(k: &SigningKey, payload: &[u8], r: u8) -> Signature {
    use curve25519_dalek::constants::EIGHT_TORSION;
    let r = Scalar::from_bytes_mod_order([r; 32]);
    let big_r = (ED25519_BASEPOINT_POINT * r + EIGHT_TORSION[1]).compress();
    let mut h = Sha512::new();
    h.update(big_r.as_bytes());
    h.update(k.verifying_key().as_bytes());
    h.update(signing_message(payload));
    let kk = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    let s = r + kk * k.to_scalar();
    let mut bytes = [0u8; 64];
    bytes[..32].copy_from_slice(big_r.as_bytes());
    bytes[32..].copy_from_slice(s.as_bytes());
    Signature::from_bytes(&bytes)
}

#[test]
fn one_item_and_a_batch_accept_the_same_signatures() {
    let k = key(9);
    let vk = k.verifying_key();
    for r in 1..=24u8 {
        let payload = vec![r; 12];
        let mixed = mixed_order_signature(&k, &payload, r);
        // The cofactorless rule refuses it; ed25519-dalek's batch took some of these (the
        // coefficient of the item a multiple of 8), which made the verdict depend on the batch.
        assert!(
            vk.verify_strict(&signing_message(&payload), &mixed)
                .is_err()
        );
        assert_eq!(verify(&vk, &payload, &mixed), Ok(()), "ZIP-215 accepts it");
        let mut f = Fixture::new(40, &[]);
        f.vks[17] = vk;
        f.payloads[17] = payload;
        f.sigs[17] = mixed;
        // As one batch (nothing bad expected) and one by one (everything bad expected).
        for share in [0.0, 1.0] {
            let (ok, _) = verify_batch_expecting(&f.items(), share);
            assert!(
                ok.iter().all(|v| *v),
                "r {r}, expected share {share}: {ok:?}"
            );
        }
    }
}

/// The kinds of item the differential test below mixes into a batch.
#[derive(Clone, Copy, Debug)]
enum Crafted {
    /// An honest signature.
    Honest,
    /// Signed by another key.
    OtherKey,
    /// An honest signature over another payload.
    OtherPayload,
    /// `R` with a component of order 8 (the cofactored equation holds, the cofactorless not).
    MixedOrderR,
    /// A key with a component of order 8, and a signature made for it.
    MixedOrderKey,
    /// An honest signature with `S + ℓ` (not canonical: refused by ZIP-215).
    NonCanonicalS,
    /// `R` a point of small order (refused by our rule).
    SmallOrderR,
    /// `R` bytes that decompress to no point.
    NotAPointR,
}

/// A key `a·B + T` (`T` of order 8) with its secret scalar `a`, and a signature by it over
/// `payload` that holds under the cofactored equation.
fn mixed_order_key_signature(seed: u8, payload: &[u8]) -> (VerifyingKey, Signature) {
    use curve25519_dalek::constants::EIGHT_TORSION;
    let a = Scalar::from_bytes_mod_order([seed; 32]);
    let big_a = ED25519_BASEPOINT_POINT * a + EIGHT_TORSION[3];
    let vk = VerifyingKey::from(big_a);
    let r = Scalar::from_bytes_mod_order([seed.wrapping_add(7); 32]);
    let big_r = (ED25519_BASEPOINT_POINT * r).compress();
    let mut h = Sha512::new();
    h.update(big_r.as_bytes());
    h.update(vk.as_bytes());
    h.update(signing_message(payload));
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    let s = r + k * a;
    let mut bytes = [0u8; 64];
    bytes[..32].copy_from_slice(big_r.as_bytes());
    bytes[32..].copy_from_slice(s.as_bytes());
    (vk, Signature::from_bytes(&bytes))
}

/// One crafted item: its key, payload and signature.
fn crafted(kind: Crafted, i: u8) -> (VerifyingKey, Vec<u8>, Signature) {
    let k = key(i);
    let payload = vec![i; 11];
    let honest = Signature::from_bytes(&sign(&k, &payload));
    let with = |r: [u8; 32], s: [u8; 32]| {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&r);
        bytes[32..].copy_from_slice(&s);
        Signature::from_bytes(&bytes)
    };
    let sig = match kind {
        Crafted::Honest => honest,
        Crafted::OtherKey => Signature::from_bytes(&sign(&key(i.wrapping_add(1)), &payload)),
        Crafted::OtherPayload => Signature::from_bytes(&sign(&k, b"another payload")),
        Crafted::MixedOrderR => mixed_order_signature(&k, &payload, i.max(1)),
        Crafted::MixedOrderKey => {
            let (vk, sig) = mixed_order_key_signature(i, &payload);
            return (vk, payload, sig);
        }
        Crafted::NonCanonicalS => {
            let s = Scalar::from_canonical_bytes(*honest.s_bytes()).unwrap();
            // S + ℓ as a 256-bit integer (S < ℓ < 2^253, so it fits).
            let mut sum = [0u8; 32];
            let mut carry = 0u16;
            // ℓ = 2^252 + 27742317777372353535851937790883648493, little-endian.
            let ell: [u8; 32] = [
                0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
                0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
            ];
            for j in 0..32 {
                let v = u16::from(s.as_bytes()[j]) + u16::from(ell[j]) + carry;
                sum[j] = v as u8;
                carry = v >> 8;
            }
            with(*honest.r_bytes(), sum)
        }
        Crafted::SmallOrderR => {
            let table = small_order_encodings();
            with(table[usize::from(i) % table.len()], *honest.s_bytes())
        }
        Crafted::NotAPointR => {
            // y = 2 is not the y-coordinate of a curve point.
            let mut r = [0u8; 32];
            r[0] = 2;
            assert!(CompressedEdwardsY(r).decompress().is_none());
            with(r, *honest.s_bytes())
        }
    };
    (k.verifying_key(), payload, sig)
}

/// ed25519-zebra's verdict for one item, with our small-order `R` refusal: the reference rule.
fn zebra_accepts(vk: &VerifyingKey, payload: &[u8], sig: &Signature) -> bool {
    !r_is_small_order(sig)
        && ed25519_zebra::VerificationKey::try_from(vk.to_bytes())
            .and_then(|k| k.verify(sig, &signing_message(payload)))
            .is_ok()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// Our equations reach ed25519-zebra's verdicts, one by one and as one batch, on honest,
    /// forged and edge-case signatures (mixed-order `R` and keys, non-canonical `S`, small-order and
    /// undecodable `R`), with keys repeated within a batch (their terms merged).
    #[test]
    fn verdicts_equal_ed25519_zebras(
        picks in proptest::collection::vec((0usize..8, 0u8..6), 1..40),
    ) {
        let kinds = [
            Crafted::Honest, Crafted::OtherKey, Crafted::OtherPayload, Crafted::MixedOrderR,
            Crafted::MixedOrderKey, Crafted::NonCanonicalS, Crafted::SmallOrderR, Crafted::NotAPointR,
        ];
        // Few key seeds, so that keys repeat within a batch.
        let items: Vec<_> = picks.iter().map(|&(k, i)| crafted(kinds[k], i)).collect();
        let expected: Vec<bool> = items.iter().map(|(vk, p, s)| zebra_accepts(vk, p, s)).collect();
        for ((vk, p, s), want) in items.iter().zip(&expected) {
            proptest::prop_assert_eq!(verify(vk, p, s).is_ok(), *want);
        }
        let batch: Vec<BatchItem<'_>> = items
            .iter()
            .map(|(key, payload, signature)| BatchItem { key, payload, signature })
            .collect();
        let (ok, _) = verify_batch(&batch);
        proptest::prop_assert_eq!(&ok, &expected);
        // The whole batch as one equation, against zebra's batch verifier over the same items.
        let messages: Vec<Vec<u8>> = items.iter().map(|(_, p, _)| signing_message(p)).collect();
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let keys: Vec<VerifyingKey> = items.iter().map(|(k, _, _)| *k).collect();
        let sigs: Vec<Signature> = items.iter().map(|(_, _, s)| *s).collect();
        let mut zebra = ed25519_zebra::batch::Verifier::new();
        for ((k, m), s) in keys.iter().zip(&refs).zip(&sigs) {
            if !r_is_small_order(s) {
                zebra.queue((ed25519_zebra::VerificationKeyBytes::from(k.to_bytes()), *s, *m));
            }
        }
        proptest::prop_assert_eq!(
            whole_batch_holds(&items),
            zebra.verify(rand10::rng()).is_ok()
        );
    }
}

/// Our batch equation over every item whose `R` is not of small order (zebra's batch leaves those
/// out too): false when one of them has no parts (an `R` that is no point, a non-canonical `S`).
fn whole_batch_holds(items: &[(VerifyingKey, Vec<u8>, Signature)]) -> bool {
    let mut batch = Batch::with_capacity(items.len());
    for (i, (vk, payload, sig)) in items.iter().enumerate() {
        if r_is_small_order(sig) {
            continue;
        }
        match Parts::of(vk, &signing_message(payload), sig) {
            Some(parts) => batch.push(i, vk, parts),
            None => return false,
        }
    }
    let all = 0..batch.len();
    batch
        .value(all, &mut BatchStats::default())
        .mul_by_cofactor()
        .is_identity()
}

#[test]
fn crafted_items_have_the_verdicts_they_were_made_for() {
    // So that the differential test above compares verdicts of both kinds.
    let want = [
        (Crafted::Honest, true),
        (Crafted::OtherKey, false),
        (Crafted::OtherPayload, false),
        (Crafted::MixedOrderR, true),
        (Crafted::MixedOrderKey, true),
        (Crafted::NonCanonicalS, false),
        (Crafted::SmallOrderR, false),
        (Crafted::NotAPointR, false),
    ];
    for (kind, accepted) in want {
        for i in 0..4u8 {
            let (vk, p, s) = crafted(kind, i);
            assert_eq!(zebra_accepts(&vk, &p, &s), accepted, "{kind:?} {i}");
            assert_eq!(verify(&vk, &p, &s).is_ok(), accepted, "{kind:?} {i}");
        }
    }
}
