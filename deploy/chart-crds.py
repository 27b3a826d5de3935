#!/usr/bin/env python3
"""Checks the custom resources in a rendered Tern chart that
kubernetes-validate has no schema for: KEDA's ScaledObject and the Prometheus
operator's ServiceMonitor and PrometheusRule. Each must point at objects the
chart rendered, or (rules) carry what the operator needs."""
import sys

import yaml

docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
services = [d for d in docs if d["kind"] == "Service"]
errors = []
for d in docs:
    kind, name = d["kind"], d["metadata"]["name"]
    if kind == "ScaledObject":
        if d.get("apiVersion") != "keda.sh/v1alpha1":
            errors.append(f"{name}: apiVersion {d.get('apiVersion')}")
        spec = d["spec"]
        if spec["scaleTargetRef"]["name"] not in deployments:
            errors.append(f"{name}: scaleTargetRef {spec['scaleTargetRef']['name']} is no rendered Deployment")
        if not (0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]):
            errors.append(f"{name}: replica bounds")
        for t in spec["triggers"]:
            md = t.get("metadata", {})
            if t["type"] == "nats-jetstream":
                for k in ("natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"):
                    if not isinstance(md.get(k), str) or not md[k]:
                        errors.append(f"{name}: nats-jetstream trigger needs string metadata.{k}")
                if md.get("stream") != "TERN_JOBS" or md.get("consumer") != "delivery":
                    errors.append(f"{name}: must watch consumer delivery on TERN_JOBS")
            elif t["type"] == "cpu":
                if t.get("metricType") not in ("Utilization", "AverageValue") or not isinstance(md.get("value"), str):
                    errors.append(f"{name}: cpu trigger")
            else:
                errors.append(f"{name}: unexpected trigger {t['type']}")
        print(f"ok   ScaledObject {name}: {[t['type'] for t in spec['triggers']]}")
    elif kind == "ServiceMonitor":
        sel = d["spec"]["selector"]["matchLabels"]
        matched = [s for s in services if all(s["metadata"]["labels"].get(k) == v for k, v in sel.items())]
        ports = [p for s in matched for p in s["spec"]["ports"] if p["name"] == d["spec"]["endpoints"][0]["port"]]
        if len(matched) != 5 or len(ports) != 5:
            errors.append(f"{name}: selects {len(matched)} Services with {len(ports)} admin ports, want 5")
        else:
            print(f"ok   ServiceMonitor {name}: scrapes the admin port of 5 Services")
    elif kind == "PrometheusRule":
        if d.get("apiVersion") != "monitoring.coreos.com/v1":
            errors.append(f"{name}: apiVersion {d.get('apiVersion')}")
        rules = [r for g in d["spec"]["groups"] for r in g["rules"]]
        bad = [r.get("alert") for r in rules if not (r.get("alert") and r.get("expr") and r.get("labels", {}).get("severity"))]
        if bad or not rules:
            errors.append(f"{name}: rules without alert, expr or severity: {bad}")
        else:
            print(f"ok   PrometheusRule {name}: {len(rules)} alerts")
for e in errors:
    print(f"FAIL {e}")
sys.exit(1 if errors else 0)
