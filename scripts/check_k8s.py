#!/usr/bin/env python3
"""Offline checks of the Kubernetes deployment (k8s/), run by `make test` (hexpulse/tests/it/k8s.rs).

For every overlay under k8s/overlays/ it renders the manifests with `kubectl kustomize`, then:
  * validates the core resources against the Kubernetes JSON schemas (kubernetes-validate, strict,
    offline) for the oldest and newest supported Kubernetes versions;
  * checks the Strimzi resources structurally (kafka.strimzi.io/v1beta2, required fields, node pools,
    topic partitions and replication against the brokers, the config and the processor replicas);
  * loads each workload's config exactly as its pod would (the ConfigMap's files in HEXPULSE_CONFIG
    order, the container's literal env) with the real loader, `hexpulse config`, and checks the
    manifests against it: ports, probes, shutdown limits, memory bounds, lake, sealing;
  * checks security contexts, Services, HPAs, the PodDisruptionBudget, ServiceMonitors, and least
    privilege: Kafka users with exactly their role's ACLs, read-only lake credentials for query,
    named peers only for the ports whose X-Forwarded-For is believed;
  * checks that k8s/Dockerfile builds what CI tests (toolchain, build command, non-root user).

Usage: check_k8s.py --hexpulse PATH [--k8s DIR] [--repo DIR]. Prints one line per check and exits 1
when any fails.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

import yaml
import kubernetes_validate.utils as kv

KUBE_VERSIONS = ["1.30.0", "1.37.0"]
STRIMZI_API = "kafka.strimzi.io/v1beta2"
STRIMZI_KINDS = {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"}
ROLES = {"ingest", "mqtt", "process", "query", "seal", "alerts"}


class Report:
    def __init__(self):
        self.failures = 0
        self.checks = 0

    def check(self, ok, what):
        self.checks += 1
        if ok:
            print(f"  ok    {what}")
        else:
            self.failures += 1
            print(f"  FAIL  {what}")
        return ok


def duration_s(text):
    """'20s', '1m', '500ms', '1d' (humantime as the config writes it) -> seconds."""
    total = 0.0
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", str(text)):
        total += float(num) * units[unit]
    return total


def quantity_bytes(q):
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    q = str(q)
    for s, mult in suffixes.items():
        if q.endswith(s):
            return float(q[: -len(s)]) * mult
    return float(q)


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def render(path):
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def effective_config(hexpulse, workload, container, configmaps, r, name):
    """Runs `hexpulse config` with the pod's config files and literal env; returns the JSON."""
    env_list = container.get("env", [])
    literal = {e["name"]: e["value"] for e in env_list if "value" in e}
    files = [p for p in literal.get("HEXPULSE_CONFIG", "").split(",") if p]
    r.check(files, f"{name}: HEXPULSE_CONFIG names config files")
    pod = workload["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    with tempfile.TemporaryDirectory() as tmp:
        local = []
        for f in files:
            found = None
            for vname, mpath in mounts.items():
                cm = volumes.get(vname, {}).get("configMap")
                if cm and f.startswith(mpath.rstrip("/") + "/"):
                    key = f[len(mpath.rstrip("/")) + 1 :]
                    data = configmaps.get(cm["name"], {}).get("data", {})
                    if key in data:
                        found = Path(tmp) / f"{len(local)}-{key}"
                        found.write_text(data[key])
            if not r.check(found is not None, f"{name}: config file {f} is a key of a mounted ConfigMap"):
                return None
            local.append(str(found))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        env.update({k: v for k, v in literal.items() if k.startswith("HEXPULSE__")})
        env["HEXPULSE_CONFIG"] = ",".join(local)
        out = subprocess.run([hexpulse, "config"], capture_output=True, text=True, env=env)
        if not r.check(out.returncode == 0, f"{name}: its config loads with the real loader (hexpulse config)"):
            print("        " + out.stderr.strip().replace("\n", "\n        "))
            return None
        return json.loads(out.stdout)


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


def check_overlay(overlay, docs, hexpulse, r):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    name_of = lambda d: f"{d['kind']}/{d['metadata']['name']}"  # noqa: E731

    # -- core resources against the Kubernetes schemas
    for d in docs:
        api = d.get("apiVersion", "")
        if api == STRIMZI_API or api.startswith("monitoring.coreos.com/"):
            continue
        for version in KUBE_VERSIONS:
            try:
                kv.validate(d, version, strict=True)
                ok, why = True, ""
            except kv.SchemaNotFoundError:
                ok, why = False, " (no schema: not a core resource?)"
            except Exception as e:  # jsonschema's ValidationError and friends
                ok, why = False, f": {str(e).splitlines()[0]}"
            r.check(ok, f"{name_of(d)} valid against Kubernetes {version} schemas{why}")

    configmaps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    services = by_kind.get("Service", [])
    workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])

    # -- workloads: security, probes, resources, and the config each one loads
    configs = {}
    for w in workloads:
        name = name_of(w)
        pod = w["spec"]["template"]["spec"]
        containers = pod.get("containers", [])
        c = next((c for c in containers if c["name"] == "hexpulse"), None)
        if not r.check(c is not None, f"{name}: has the container `hexpulse`"):
            continue
        args = c.get("args", [])
        role = args[0] if args else None
        r.check(role in ROLES, f"{name}: runs a hexpulse role ({role})")
        psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
        r.check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, f"{name}: runs as non-root")
        r.check(csc.get("readOnlyRootFilesystem") is True, f"{name}: read-only root filesystem")
        r.check(csc.get("allowPrivilegeEscalation") is False, f"{name}: no privilege escalation")
        r.check("ALL" in csc.get("capabilities", {}).get("drop", []), f"{name}: drops all capabilities")
        res = c.get("resources", {})
        r.check(
            res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory") and res.get("limits", {}).get("memory"),
            f"{name}: cpu and memory requests, memory limit",
        )
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = c.get(probe, {}).get("httpGet", {})
            r.check(get.get("path") == path and get.get("port") in ports, f"{name}: {probe} GET {path} on a named container port")
        cfg = effective_config(hexpulse, w, c, configmaps, r, name)
        if cfg is None:
            continue
        configs[role] = (w, c, cfg)
        grace = pod.get("terminationGracePeriodSeconds", 30)
        limit = res.get("limits", {}).get("memory")
        mem = quantity_bytes(limit) if limit else 0
        if role == "ingest":
            ing = cfg["ingest"]
            r.check(port_of(ing["listen"]) == ports.get("http"), f"{name}: [ingest] listen port is the container port `http`")
            r.check(ing.get("admin_listen") and port_of(ing["admin_listen"]) == ports.get("metrics"), f"{name}: [ingest] admin_listen (metrics) is the container port `metrics`")
            r.check(grace > duration_s(ing["shutdown_timeout"]), f"{name}: terminationGracePeriodSeconds {grace} > [ingest] shutdown_timeout {ing['shutdown_timeout']}")
            r.check(mem > ing["max_inflight_bytes"], f"{name}: memory limit {limit} above [ingest] max_inflight_bytes")
        elif role == "mqtt":
            m, ing = cfg["mqtt"], cfg["ingest"]
            r.check(port_of(m["listen"]) == ports.get("metrics"), f"{name}: [mqtt] listen port is the container port `metrics`")
            r.check(grace > duration_s(ing["shutdown_timeout"]), f"{name}: terminationGracePeriodSeconds {grace} > [ingest] shutdown_timeout {ing['shutdown_timeout']}")
            r.check(mem > ing["max_inflight_bytes"], f"{name}: memory limit {limit} above [ingest] max_inflight_bytes")
            # A stable client id per pod: its MQTT session (unacknowledged messages) outlives a restart.
            cid = {e["name"]: e for e in c.get("env", [])}.get("HEXPULSE__MQTT__CLIENT_ID", {})
            r.check(w["kind"] == "StatefulSet" and cid.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
                    f"{name}: a StatefulSet whose pod name is the MQTT client id (a session that outlives a restart)")
            r.check(w["spec"].get("replicas", 1) == 1 or m["share_group"], f"{name}: several bridges share one subscription ([mqtt] share_group {m['share_group']!r})")
        elif role == "process":
            p = cfg["process"]
            r.check(port_of(p["listen"]) == ports.get("metrics"), f"{name}: [process] listen port is the container port `metrics`")
            r.check(grace > duration_s(p["shutdown_timeout"]), f"{name}: terminationGracePeriodSeconds {grace} > [process] shutdown_timeout {p['shutdown_timeout']}")
            r.check(duration_s(p["epoch"]["seal_interval"]) == 0, f"{name}: processors never seal (seal_interval 0s; the sealer does)")
        elif role == "query":
            q = cfg["query"]
            r.check(port_of(q["listen"]) == ports.get("http"), f"{name}: [query] listen port is the container port `http`")
            r.check(q.get("admin_listen") and port_of(q["admin_listen"]) == ports.get("metrics"), f"{name}: [query] admin_listen (metrics) is the container port `metrics`")
            live = q.get("live", {})
            budget = q["memory_limit_bytes"] + live.get("memory_bytes", 256 << 20)
            r.check(mem > budget, f"{name}: memory limit {limit} above [query] memory_limit_bytes {q['memory_limit_bytes']} plus [query.live] memory_bytes")
            # The live rows: every processor pod, through the processors' headless Service.
            procs = {(sv["metadata"]["name"], pt["port"]) for sv in services
                     if sv["spec"].get("selector", {}).get("app.kubernetes.io/component") == "processor"
                     and sv["spec"].get("clusterIP") == "None" for pt in sv["spec"].get("ports", [])}
            reached = {(u.hostname, u.port) for u in map(urllib.parse.urlparse, live.get("sources", []))}
            r.check(bool(reached) and reached <= procs, f"{name}: [query.live] sources {sorted(live.get('sources', []))} name the processors' headless Service and port")
            tmp = next((v["emptyDir"].get("sizeLimit") for v in pod.get("volumes", []) if v["name"] == "tmp" and "emptyDir" in v), None)
            spill = q.get("max_spill_bytes", 1 << 30)
            r.check(tmp is not None and spill < quantity_bytes(tmp), f"{name}: [query] max_spill_bytes {spill} below the /tmp volume's sizeLimit {tmp}")
            public = set(q["auth"]["public"])
            r.check("raw" not in public and "*" not in public, f"{name}: raw road rows are never public")
        elif role == "seal":
            listen = args[args.index("--listen") + 1] if "--listen" in args else None
            r.check(listen and port_of(listen) == ports.get("metrics"), f"{name}: sealer --listen is the container port `metrics`")
            r.check("--every" in args, f"{name}: sealer runs on a schedule (--every)")
            r.check(w["kind"] == "StatefulSet" and w["spec"].get("replicas") == 1, f"{name}: one sealer (StatefulSet of 1: at most one pod at a time)")
            budget = cfg["process"].get("epoch", {}).get("seal_memory_bytes", 512 << 20)
            r.check(mem > budget * 3 // 2, f"{name}: memory limit {limit} above 1.5 x [process.epoch] seal_memory_bytes {budget}")
            tmp = next((v["emptyDir"].get("sizeLimit") for v in pod.get("volumes", []) if v["name"] == "tmp" and "emptyDir" in v), None)
            # About 120 bytes a row spilled at the peak: an epoch of 50M rows.
            r.check(tmp is not None and quantity_bytes(tmp) >= 6 * 10**9, f"{name}: /tmp sizeLimit {tmp} holds a 50M-row epoch's spill (6 GB)")
        elif role == "alerts":
            a = cfg["query"].get("alerts", {})
            r.check(a.get("listen") and port_of(a["listen"]) == ports.get("metrics"), f"{name}: [query.alerts] listen is the container port `metrics`")
            r.check(w["kind"] == "StatefulSet" and w["spec"].get("replicas") == 1, f"{name}: one alerts role (StatefulSet of 1: each event delivered by one pod)")
            r.check(a.get("webhook_schemes", ["https"]) == ["https"], f"{name}: webhooks over https only ({a.get('webhook_schemes')})")
        if role in ("process", "query", "seal", "alerts"):
            lake = cfg["query" if role in ("query", "alerts") else "process"]["lake_url"]
            r.check(re.match(r"^(s3|gs|az)://", lake), f"{name}: the lake is an object store ({lake})")
            r.check(any("secretRef" in e for e in c.get("envFrom", [])), f"{name}: object store credentials from a Secret")
        # The registry file lies in the mounted registry ConfigMap.
        reg = cfg["registry"]["path"]
        mounts = {m["mountPath"].rstrip("/"): m["name"] for m in c.get("volumeMounts", [])}
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        d, _, key = reg.rpartition("/")
        cm = vols.get(mounts.get(d), {}).get("configMap", {}).get("name")
        r.check(cm in configmaps and key in configmaps[cm].get("data", {}), f"{name}: registry {reg} is in a mounted ConfigMap")

    lake_urls = {cfg["query" if role in ("query", "alerts") else "process"]["lake_url"] for role, (_, _, cfg) in configs.items() if role not in ("ingest", "mqtt")}
    r.check(len(lake_urls) == 1, f"processors, sealer and query read one lake ({sorted(lake_urls)})")
    r.check(set(configs) == ROLES, f"every role is deployed ({sorted(configs)})")

    # -- Strimzi
    for d in docs:
        if d["kind"] in STRIMZI_KINDS:
            r.check(d["apiVersion"] == STRIMZI_API, f"{name_of(d)}: apiVersion {STRIMZI_API}")
    kafkas = by_kind.get("Kafka", [])
    if r.check(len(kafkas) == 1, "one Strimzi Kafka cluster"):
        k = kafkas[0]
        kname = k["metadata"]["name"]
        ann = k["metadata"].get("annotations", {})
        r.check(ann.get("strimzi.io/kraft") == "enabled" and ann.get("strimzi.io/node-pools") == "enabled", f"Kafka/{kname}: KRaft with node pools")
        spec = k.get("spec", {}).get("kafka", {})
        listeners = spec.get("listeners", [])
        r.check(listeners and all({"name", "port", "type", "tls"} <= set(l) for l in listeners), f"Kafka/{kname}: listeners with name, port, type, tls")
        r.check("topicOperator" in k["spec"].get("entityOperator", {}), f"Kafka/{kname}: the topic operator manages KafkaTopics")
        r.check("userOperator" in k["spec"].get("entityOperator", {}), f"Kafka/{kname}: the user operator manages KafkaUsers")
        r.check(spec.get("authorization", {}).get("type") == "simple", f"Kafka/{kname}: ACLs enforced (authorization: simple)")
        for l in listeners:
            auth = l.get("authentication", {}).get("type")
            r.check(auth in ("scram-sha-512", "tls"), f"Kafka/{kname}: listener {l.get('name')} authenticates its clients ({auth})")
            comps = [p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") for p in l.get("networkPolicyPeers", [])]
            r.check(comps and set(comps) <= {"ingest", "processor"}, f"Kafka/{kname}: listener {l.get('name')} admits only ingest and processor pods ({comps})")
        kc = spec.get("config", {})
        pools = [p for p in by_kind.get("KafkaNodePool", []) if p["metadata"].get("labels", {}).get("strimzi.io/cluster") == kname]
        r.check(len(pools) == len(by_kind.get("KafkaNodePool", [])), "every KafkaNodePool names the cluster (strimzi.io/cluster)")
        brokers = controllers = 0
        for p in pools:
            ps = p.get("spec", {})
            roles = set(ps.get("roles", []))
            r.check(isinstance(ps.get("replicas"), int) and ps["replicas"] >= 1 and roles and roles <= {"broker", "controller"}, f"KafkaNodePool/{p['metadata']['name']}: replicas and roles")
            st = ps.get("storage", {})
            if st.get("type") == "jbod":
                ok = st.get("volumes") and all("id" in v and v.get("type") in ("persistent-claim", "ephemeral") for v in st["volumes"])
            else:
                ok = st.get("type") in ("ephemeral", "persistent-claim") and "volumes" not in st
            r.check(ok, f"KafkaNodePool/{p['metadata']['name']}: storage is well-formed ({st.get('type')})")
            brokers += ps.get("replicas", 0) if "broker" in roles else 0
            controllers += ps.get("replicas", 0) if "controller" in roles else 0
        r.check(controllers % 2 == 1, f"an odd number of KRaft controllers ({controllers})")
        rf, isr = kc.get("default.replication.factor", 1), kc.get("min.insync.replicas", 1)
        r.check(rf <= brokers and isr < rf, f"Kafka/{kname}: default replication {rf} <= {brokers} brokers, min.insync {isr} < it")
        topics = by_kind.get("KafkaTopic", [])
        ingest_cfg = configs.get("ingest", (None, None, None))[2]
        for t in topics:
            ts = t.get("spec", {})
            tname = ts.get("topicName", t["metadata"]["name"])
            r.check(t["metadata"].get("labels", {}).get("strimzi.io/cluster") == kname, f"KafkaTopic/{tname}: names the cluster")
            r.check(isinstance(ts.get("partitions"), int) and isinstance(ts.get("replicas"), int), f"KafkaTopic/{tname}: partitions and replicas")
            reps, tisr = ts.get("replicas", 0), ts.get("config", {}).get("min.insync.replicas", isr)
            r.check(reps == 3 and tisr == 2, f"KafkaTopic/{tname}: replication 3, min.insync.replicas 2 (got {reps}, {tisr})")
            r.check(reps <= brokers, f"KafkaTopic/{tname}: replicas {reps} <= {brokers} brokers")
            r.check("retention.ms" in ts.get("config", {}) or "retention.bytes" in ts.get("config", {}), f"KafkaTopic/{tname}: retention set")
            if ingest_cfg:
                kcfg = ingest_cfg["kafka"]
                if tname == kcfg["raw_topic"]:
                    r.check(ts["partitions"] == kcfg["partitions"], f"KafkaTopic/{tname}: {ts['partitions']} partitions = [kafka] partitions {kcfg['partitions']}")
                    r.check(reps == kcfg["replication"], f"KafkaTopic/{tname}: replicas = [kafka] replication {kcfg['replication']}")
                    procs = [w for w in workloads if (w["spec"]["template"]["spec"]["containers"][0].get("args") or [""])[0] == "process"]
                    n = sum(w["spec"].get("replicas", 1) for w in procs)
                    r.check(0 < n <= ts["partitions"], f"processor replicas {n} <= {ts['partitions']} partitions")
        if ingest_cfg:
            want = f"{kname}-kafka-bootstrap:{listeners[0]['port']}" if listeners else None
            r.check(ingest_cfg["kafka"]["brokers"] == want, f"[kafka] brokers is Strimzi's bootstrap Service ({want})")
            r.check(any(t.get("spec", {}).get("topicName") == ingest_cfg["kafka"]["raw_topic"] for t in topics), "the raw topic is a KafkaTopic")

    # -- least privilege: Kafka users and ACLs per role, read-only lake credentials for query,
    #    X-Forwarded-For believed only from named proxies (SECURITY.md, round two #17)
    users = {u["metadata"]["name"]: u for u in by_kind.get("KafkaUser", [])}
    for role, (w, c, cfg) in configs.items():
        name = name_of(w)
        env = {e["name"]: e for e in c.get("env", [])}
        user = cfg["kafka"].get("sasl_username")
        if role in ("ingest", "mqtt", "process"):
            u = users.get(user)
            if r.check(u is not None, f"{name}: connects to Kafka as a KafkaUser ({user})"):
                us = u.get("spec", {})
                r.check(us.get("authentication", {}).get("type") == "scram-sha-512", f"KafkaUser/{user}: SCRAM-SHA-512")
                acls = us.get("authorization", {}).get("acls", [])
                raw, group = cfg["kafka"]["raw_topic"], cfg["process"]["group_id"]
                ops = {}
                for a in acls:
                    res = a.get("resource", {})
                    ops.setdefault((res.get("type"), res.get("name"), res.get("patternType", "literal")), set()).update(a.get("operations", []))
                want = {("topic", raw, "literal"): {"Write", "Describe"}} if role in ("ingest", "mqtt") else {("topic", raw, "literal"): {"Read", "Describe"}, ("group", group, "literal"): {"Read"}}
                r.check(ops == want, f"KafkaUser/{user}: exactly the ACLs {role} needs ({ops})")
            pw = env.get("HEXPULSE__KAFKA__SASL_PASSWORD", {}).get("valueFrom", {}).get("secretKeyRef", {})
            r.check(pw.get("name") == user and pw.get("key") == "password", f"{name}: the Kafka password comes from the user's Secret")
        else:
            r.check(not user and "HEXPULSE__KAFKA__SASL_PASSWORD" not in env, f"{name}: holds no Kafka user (it never talks to Kafka)")
        secrets = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
        if role == "query":
            r.check(secrets and all("readonly" in sec for sec in secrets), f"{name}: read-only lake credentials only ({secrets})")
        if role in ("ingest", "query"):
            proxies = cfg[role].get("trusted_proxies", [])
            r.check(proxies and not any(p.endswith("/0") for p in proxies), f"{name}: X-Forwarded-For believed only from named proxy ranges ({proxies})")
    for uname in users:
        used = any(cfg["kafka"].get("sasl_username") == uname for _, _, cfg in configs.values())
        r.check(used, f"KafkaUser/{uname}: used by a role")

    # -- Services, HPAs, PDB, ServiceMonitors
    for s in services:
        sel = s["spec"].get("selector", {})
        matched = [w for w in workloads if labels_match(sel, w["spec"]["template"]["metadata"].get("labels", {}))]
        r.check(matched, f"{name_of(s)}: selects a workload")
        for p in s["spec"].get("ports", []):
            tp = p.get("targetPort", p["port"])
            ok = all(any(tp in (cp.get("name"), cp.get("containerPort")) for c in w["spec"]["template"]["spec"]["containers"] for cp in c.get("ports", [])) for w in matched)
            r.check(ok, f"{name_of(s)}: port {p.get('name')} targets a container port ({tp})")
    for h in by_kind.get("HorizontalPodAutoscaler", []):
        ref = h["spec"]["scaleTargetRef"]
        r.check(any(w["kind"] == ref["kind"] and w["metadata"]["name"] == ref["name"] for w in workloads), f"{name_of(h)}: scales an existing {ref['kind']}/{ref['name']}")
        r.check(h["spec"].get("minReplicas", 1) <= h["spec"]["maxReplicas"], f"{name_of(h)}: minReplicas <= maxReplicas")
    pdbs = by_kind.get("PodDisruptionBudget", [])
    procs = [w for w in workloads if (w["spec"]["template"]["spec"]["containers"][0].get("args") or [""])[0] == "process"]
    r.check(any(labels_match(p["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"]) for p in pdbs for w in procs), "a PodDisruptionBudget covers the processors")
    for sm in by_kind.get("ServiceMonitor", []):
        sel = sm["spec"]["selector"]["matchLabels"]
        matched = [s for s in services if labels_match(sel, s["metadata"].get("labels", {}))]
        r.check(matched, f"{name_of(sm)}: selects Services")
        for ep in sm["spec"].get("endpoints", []):
            for s in matched:
                r.check(any(p.get("name") == ep.get("port") for p in s["spec"]["ports"]), f"{name_of(sm)}: {s['metadata']['name']} has the port {ep.get('port')}")
    # Every Prometheus-scraped role has a Service.
    for role in ROLES:
        if role in configs:
            w = configs[role][0]
            r.check(any(labels_match(s["spec"].get("selector", {}), w["spec"]["template"]["metadata"]["labels"]) for s in services), f"{name_of(w)}: has a Service (metrics)")

    # -- NetworkPolicies: default deny; nothing is open to all but ingest's device port (and
    #    ingest and query, whose X-Forwarded-For is believed, admit named peers only)
    nps = by_kind.get("NetworkPolicy", [])
    pods = {name_of(w): w["spec"]["template"]["metadata"]["labels"] for w in workloads}
    for wname, labels in pods.items():
        selecting = [n for n in nps if labels_match(n["spec"]["podSelector"].get("matchLabels", {}), labels) and "Ingress" in n["spec"].get("policyTypes", [])]
        r.check(selecting, f"{wname}: isolated by a NetworkPolicy (ingress)")
    ingest = configs.get("ingest")
    for n in nps:
        for rule in n["spec"].get("ingress", []):
            peers = rule.get("from")
            open_to_all = not peers or any(p.get("ipBlock", {}).get("cidr") in ("0.0.0.0/0", "::/0") for p in peers)
            if not open_to_all:
                continue
            sel = n["spec"]["podSelector"].get("matchLabels", {})
            hit = [w for w, labels in pods.items() if labels_match(sel, labels)]
            only_ingest = ingest is not None and hit == [name_of(ingest[0])]
            ports = [p.get("port") for p in rule.get("ports", [])]
            device_port = ingest and port_of(ingest[2]["ingest"]["listen"])
            r.check(only_ingest and ports == [device_port], f"{name_of(n)}: open to everyone only on ingest's device port ({hit} on {ports})")
    if "query" in configs:
        qport = port_of(configs["query"][2]["query"]["listen"])
        qlabels = configs["query"][0]["spec"]["template"]["metadata"]["labels"]
        ok = any(labels_match(n["spec"]["podSelector"].get("matchLabels", {}), qlabels) and any(rule.get("from") and qport in [p.get("port") for p in rule.get("ports", [])] for rule in n["spec"].get("ingress", [])) for n in nps)
        r.check(ok, f"query's port {qport} is reachable from named peers only")
    if "ingest" in configs:
        iport = port_of(configs["ingest"][2]["ingest"]["listen"])
        ilabels = configs["ingest"][0]["spec"]["template"]["metadata"]["labels"]
        rules = [rule for n in nps if labels_match(n["spec"]["podSelector"].get("matchLabels", {}), ilabels) for rule in n["spec"].get("ingress", []) if iport in [p.get("port") for p in rule.get("ports", [])]]
        r.check(rules and all(rule.get("from") for rule in rules), f"ingest's port {iport} is reachable from named peers only (the proxy its X-Forwarded-For comes from)")


def check_dockerfile(repo, r):
    df = (repo / "k8s" / "Dockerfile").read_text()
    channel = re.search(r'channel\s*=\s*"([^"]+)"', (repo / "rust-toolchain.toml").read_text()).group(1)
    r.check(re.search(rf"^FROM rust:{re.escape(channel)}\S* AS build", df, re.M), f"Dockerfile builds with the pinned toolchain rust:{channel}")
    make_build = re.search(r"^build:.*\n(?:\t.*\n)*?\t(cargo build.*)$", (repo / "Makefile").read_text(), re.M).group(1).strip()
    r.check(make_build in df, f"Dockerfile runs `make build`'s command: {make_build}")
    r.check(re.search(r"^USER 65532", df, re.M), "Dockerfile's runtime user is 65532 (non-root, as the pods)")
    r.check(len(re.findall(r"^FROM ", df, re.M)) >= 2, "Dockerfile is multi-stage")
    r.check(re.search(r'^ENTRYPOINT \["/usr/local/bin/hexpulse"\]', df, re.M), "Dockerfile's entrypoint is the one hexpulse binary")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hexpulse", required=True, help="the hexpulse binary (its `config` subcommand loads configs)")
    ap.add_argument("--k8s", default=None, help="the k8s folder (default: REPO/k8s)")
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parent.parent))
    a = ap.parse_args()
    repo = Path(a.repo)
    k8s = Path(a.k8s) if a.k8s else repo / "k8s"
    r = Report()
    overlays = sorted(p for p in (k8s / "overlays").iterdir() if (p / "kustomization.yaml").exists())
    r.check({"dev", "prod"} <= {p.name for p in overlays}, f"overlays dev and prod exist ({[p.name for p in overlays]})")
    for overlay in overlays:
        print(f"== overlay {overlay.name}")
        try:
            docs = render(overlay)
        except RuntimeError as e:
            r.check(False, str(e))
            continue
        r.check(True, f"kubectl kustomize rendered {len(docs)} resources")
        check_overlay(overlay, docs, a.hexpulse, r)
    print("== Dockerfile")
    check_dockerfile(repo, r)
    print(f"{r.checks - r.failures} of {r.checks} checks passed")
    sys.exit(1 if r.failures else 0)


if __name__ == "__main__":
    main()
