//! Which curve25519-dalek backend the verdicts of this run were reached on. `make test` runs this
//! crate's tests once more under each fallback build (`scripts/test.sh`, serial and AVX2), with
//! `HEXPULSE_EXPECT_DALEK_BACKEND` naming the backend that build must run; the vectors and the
//! property tests then show the verdicts do not depend on the backend.

#![cfg(target_arch = "x86_64")]

use hexpulse_schemas::sign;

#[test]
fn the_backend_is_the_one_the_build_asked_for() {
    let ran = sign::backend();
    eprintln!("curve25519-dalek backend: {ran}");
    match std::env::var("HEXPULSE_EXPECT_DALEK_BACKEND") {
        Ok(want) => assert_eq!(ran, want, "this build was asked for the {want} backend"),
        // The workspace's own build: IFMA where the CPU has it (`.cargo/config.toml`), else AVX2.
        Err(_) => {
            let ifma = std::arch::is_x86_feature_detected!("avx512ifma")
                && std::arch::is_x86_feature_detected!("avx512vl");
            let expected = if ifma {
                "avx512ifma"
            } else if std::arch::is_x86_feature_detected!("avx2") {
                "avx2"
            } else {
                "serial"
            };
            assert_eq!(ran, expected);
        }
    }
}
