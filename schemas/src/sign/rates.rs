//! Raw Ed25519 verification rates of one core (`hexpulse bench verify`, and the ingest and end-to-end
//! benchmarks' yardstick). Here, beside the verifier, so that `examples/verify_rates.rs` can measure
//! each of curve25519-dalek's backends with a small build of this crate alone
//! (`scripts/bench_verify_backends.sh`).

use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

/// The `i`th key of the measured set.
fn rates_key(i: u64) -> SigningKey {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&i.to_le_bytes());
    s[8..].copy_from_slice(b"hexpulse-verify-rates-v1");
    super::signing_key_from_seed(s)
}

/// Single-core verification rates of this machine, in verifies per second.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct VerifyRates {
    /// curve25519-dalek's backend that ran ([`super::backend`]).
    pub backend: &'static str,
    /// ed25519-dalek's `verify_strict`, one signature at a time.
    pub single_per_s: f64,
    /// `sign::verify` (our rule: ZIP-215 and the small-order `R` refusal), one at a time.
    pub single_rule_per_s: f64,
    /// ed25519-dalek's `verify_batch` over 128 signatures.
    pub batch128_per_s: f64,
    /// `sign::verify_batch` (our rule) over the same 128, all valid: one batch.
    pub batch128_rule_per_s: f64,
    /// The faster of the two batch rates above: the benchmarks' yardstick, "one core's raw batch
    /// verify" (issue #26 compares ingest and end to end with the fastest batch verify the machine has).
    pub fastest_batch_per_s: f64,
    /// Ingest's verifier over batches of 200, all valid.
    pub ingest200_clean_per_s: f64,
    /// The same with 1% bad signatures (two in each batch of 200), the verifier not expecting them
    /// (`sign::verify_batch`: the failed batch of 200, then chunks, then single checks).
    pub ingest200_bad1pct_blind_per_s: f64,
    /// The same, planned from the running share of bad signatures as ingest does
    /// (`sign::verify_batch_expecting` with a `sign::BadShare`).
    pub ingest200_bad1pct_planned_per_s: f64,
}

/// Measures single and batch-of-128 Ed25519 verification on the calling thread for about `each`.
pub fn raw_verify_rates(each: Duration) -> VerifyRates {
    let n = 1024usize;
    let keys: Vec<SigningKey> = (0..n as u64).map(rates_key).collect();
    let vks: Vec<VerifyingKey> = keys.iter().map(|k| k.verifying_key()).collect();
    let msgs: Vec<Vec<u8>> = (0..n)
        .map(|i| super::signing_message(&(i as u64).to_le_bytes().repeat(12)))
        .collect();
    let sigs: Vec<Signature> = keys
        .iter()
        .zip(&msgs)
        .map(|(k, m)| ed25519_dalek::Signer::sign(k, m))
        .collect();

    let mut done = 0usize;
    let t = Instant::now();
    while t.elapsed() < each {
        for i in 0..64 {
            let j = (done + i) % n;
            assert!(vks[j].verify_strict(&msgs[j], &sigs[j]).is_ok());
        }
        done += 64;
    }
    let single = done as f64 / t.elapsed().as_secs_f64();

    let mut done = 0usize;
    let t = Instant::now();
    while t.elapsed() < each {
        for i in 0..64 {
            let j = (done + i) % n;
            let payload = &msgs[j][super::DOMAIN_PREFIX.len()..];
            assert!(super::verify(&vks[j], payload, &sigs[j]).is_ok());
        }
        done += 64;
    }
    let single_rule = done as f64 / t.elapsed().as_secs_f64();

    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    let mut done = 0usize;
    let t = Instant::now();
    while t.elapsed() < each {
        let j = (done / 128 % (n / 128)) * 128;
        assert!(
            ed25519_dalek::verify_batch(&refs[j..j + 128], &sigs[j..j + 128], &vks[j..j + 128])
                .is_ok()
        );
        done += 128;
    }
    let batch128 = done as f64 / t.elapsed().as_secs_f64();

    // Item `i` of the fleet, signed with signature `s` (another item's, to make it bad).
    let (vks_ref, msgs_ref, sigs_ref) = (&vks, &msgs, &sigs);
    let item = move |i: usize, s: usize| super::BatchItem {
        key: &vks_ref[i],
        payload: &msgs_ref[i][super::DOMAIN_PREFIX.len()..],
        signature: &sigs_ref[s],
    };
    let mut done = 0usize;
    let t = Instant::now();
    while t.elapsed() < each {
        let j = (done / 128 % (n / 128)) * 128;
        let items: Vec<super::BatchItem<'_>> = (j..j + 128).map(|i| item(i, i)).collect();
        let (ok, stats) = super::verify_batch(&items);
        assert!(ok.iter().all(|v| *v) && stats.batch_checks == 1);
        done += 128;
    }
    let batch128_rule = done as f64 / t.elapsed().as_secs_f64();

    // Ingest's verifier on batches of 200: clean, and with two bad signatures in each (items 57 and
    // 141, signed by another device's key), blind or planned from the running share.
    let rate_of = |bad: bool, planned: bool| {
        let share = super::BadShare::new();
        let (b1, b2) = (57, 141);
        let mut done = 0usize;
        let t = Instant::now();
        while t.elapsed() < each {
            let j = (done / 200 % (n / 200)) * 200;
            let items: Vec<super::BatchItem<'_>> = (j..j + 200)
                .map(|i| {
                    let bad_here = bad && (i == j + b1 || i == j + b2);
                    item(i, if bad_here { (i + 1) % n } else { i })
                })
                .collect();
            let expect = if planned { share.get() } else { 0.0 };
            let (ok, stats) = super::verify_batch_expecting(&items, expect);
            share.observe_batch(&stats, items.len());
            assert_eq!(ok.iter().filter(|v| !**v).count(), 2 * usize::from(bad));
            done += 200;
        }
        done as f64 / t.elapsed().as_secs_f64()
    };
    VerifyRates {
        backend: super::backend(),
        single_per_s: single,
        single_rule_per_s: single_rule,
        batch128_per_s: batch128,
        batch128_rule_per_s: batch128_rule,
        fastest_batch_per_s: batch128.max(batch128_rule),
        ingest200_clean_per_s: rate_of(false, false),
        ingest200_bad1pct_blind_per_s: rate_of(true, false),
        ingest200_bad1pct_planned_per_s: rate_of(true, true),
    }
}
