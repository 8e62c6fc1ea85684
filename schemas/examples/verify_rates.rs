//! Prints this build's raw Ed25519 verify rates of one core as JSON, with the curve25519-dalek
//! backend that ran. `scripts/bench_verify_backends.sh` builds it once per backend (the backend is
//! chosen at build time by `--cfg curve25519_dalek_backend=...`), which a build of this small crate
//! makes cheap; `hexpulse bench verify` measures the same on the workspace's own build.

fn main() {
    let each = std::env::args()
        .nth(1)
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    let r =
        hexpulse_schemas::sign::rates::raw_verify_rates(std::time::Duration::from_secs_f64(each));
    println!("{}", serde_json::to_string(&r).expect("rates serialise"));
}
