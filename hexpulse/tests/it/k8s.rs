//! The Kubernetes deployment (k8s/) checked offline by `scripts/check_k8s.py`: every overlay renders
//! with `kubectl kustomize`, core resources validate against the Kubernetes schemas, Strimzi
//! resources are well-formed and consistent with the config, and each ConfigMap's config loads with
//! this very binary. A broken copy of the manifests must fail the same checks.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hexpulse_testkit::testenv;

fn repo() -> PathBuf {
    hexpulse_testkit::testenv::repo_root()
}

/// Runs the checker on `k8s` (a folder laid out like the repository's k8s/); None when the tools
/// are missing outside `make test`.
fn check(k8s: &Path) -> Option<Output> {
    let python = testenv::python_or_skip("the k8s checks")?;
    let out = Command::new(python)
        .arg(repo().join("scripts/check_k8s.py"))
        .arg("--hexpulse")
        .arg(env!("CARGO_BIN_EXE_hexpulse"))
        .arg("--k8s")
        .arg(k8s)
        .arg("--repo")
        .arg(repo())
        .output()
        .expect("run check_k8s.py");
    Some(out)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} lacks {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn k8s_overlays_render_validate_and_load_their_config() {
    let Some(out) = check(&repo().join("k8s")) else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "check_k8s.py found problems");
    for overlay in ["dev", "prod"] {
        assert!(text.contains(&format!("== overlay {overlay}")), "{overlay}");
    }
    assert!(text.contains("its config loads with the real loader"));
    assert!(text.contains("valid against Kubernetes"));
}

#[test]
fn k8s_checks_catch_broken_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let k8s = dir.path().join("k8s");
    copy_dir(&repo().join("k8s"), &k8s);
    let prod = k8s.join("overlays/prod");
    // Each a mistake a real change could make; each must be named by a failing check.
    edit(&prod.join("kustomization.yaml"), "count: 24", "count: 64");
    // A misspelt key in the dev overlay's config: the loader refuses unknown keys.
    edit(
        &k8s.join("overlays/dev/overlay.toml"),
        "compact_grace = ",
        "compact_grase = ",
    );
    edit(
        &prod.join("patches.yaml"),
        "partitions: 48",
        "partitions: 47",
    );
    edit(
        &k8s.join("base/ingest.yaml"),
        "terminationGracePeriodSeconds: 30",
        "terminationGracePeriodSeconds: 10",
    );
    edit(
        &k8s.join("base/query.yaml"),
        "  replicas: 2\n",
        "  replicas: 2\n  replica: 2\n",
    );
    edit(
        &k8s.join("base/kafka.yaml"),
        "min.insync.replicas: 2\n    # Seven",
        "min.insync.replicas: 3\n    # Seven",
    );
    edit(
        &k8s.join("base/networkpolicies.yaml"),
        "    - from:\n        - namespaceSelector:\n            matchLabels:\n              kubernetes.io/metadata.name: ingress-nginx\n      ports:\n        - port: 8082",
        "    - ports:\n        - port: 8082",
    );
    // Least privilege (#20.17): query given the write credentials, a Kafka user allowed to read
    // everything, a listener without authentication, and XFF believed from anywhere.
    edit(
        &k8s.join("base/query.yaml"),
        "name: hexpulse-lake-readonly-credentials",
        "name: hexpulse-lake-credentials",
    );
    edit(
        &k8s.join("base/kafka.yaml"),
        "operations: [Read, Describe]",
        "operations: [Read, Describe]\n      - resource: {type: topic, name: \"*\", patternType: literal}\n        operations: [All]",
    );
    edit(
        &k8s.join("base/kafka.yaml"),
        "        authentication:\n          type: scram-sha-512\n        # Strimzi",
        "        # Strimzi",
    );
    edit(
        &k8s.join("base/hexpulse.toml"),
        "trusted_proxies = [\"10.0.0.0/8\", \"172.16.0.0/12\", \"192.168.0.0/16\"]\n\n[mqtt]",
        "trusted_proxies = [\"0.0.0.0/0\"]\n\n[mqtt]",
    );
    // Two bridges on one plain subscription: each device message would be bridged twice.
    edit(
        &k8s.join("base/hexpulse.toml"),
        "share_group = \"hexpulse\"",
        "share_group = \"\"",
    );
    // The sealer's spill volume left at the pods' default, and a budget above its memory limit.
    edit(
        &k8s.join("base/sealer-spill.yaml"),
        "sizeLimit: 16Gi",
        "sizeLimit: 1Gi",
    );
    edit(
        &k8s.join("base/hexpulse.toml"),
        "seal_memory_bytes = 2147483648",
        "seal_memory_bytes = 4294967296",
    );
    // The live rows asked of a port the processors do not serve.
    edit(
        &k8s.join("base/hexpulse.toml"),
        "sources = [\"http://hexpulse-processor:8081\"]",
        "sources = [\"http://hexpulse-processor:9999\"]",
    );
    let Some(out) = check(&k8s) else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(!out.status.success(), "broken manifests passed");
    let failed: Vec<&str> = text.lines().filter(|l| l.contains("FAIL")).collect();
    for needle in [
        "processor replicas 64 <= 47 partitions",
        "47 partitions = [kafka] partitions 48",
        "its config loads with the real loader",
        "Deployment/hexpulse-ingest: terminationGracePeriodSeconds 10",
        "Deployment/hexpulse-query valid against Kubernetes",
        "min.insync.replicas 2 (got 3, 3)",
        "hexpulse-query-from-gateway: open to everyone",
        "Deployment/hexpulse-query: read-only lake credentials only",
        "KafkaUser/hexpulse-processor: exactly the ACLs process needs",
        "listener plain authenticates its clients",
        "Deployment/hexpulse-ingest: X-Forwarded-For believed only from named proxy ranges",
        "StatefulSet/hexpulse-sealer: memory limit 4Gi above 1.5 x",
        "StatefulSet/hexpulse-sealer: /tmp sizeLimit 1Gi holds",
        "Deployment/hexpulse-query: [query.live] sources ['http://hexpulse-processor:9999']",
        "StatefulSet/hexpulse-mqtt: several bridges share one subscription",
    ] {
        assert!(
            failed.iter().any(|l| l.contains(needle)),
            "no failing check names {needle:?}; failures:\n{}",
            failed.join("\n")
        );
    }
}
