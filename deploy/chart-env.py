#!/usr/bin/env python3
"""The environment each Deployment of a rendered Tern chart gives its container.

Reads `helm template` output (a multi-document YAML file) and prints, as JSON,
{deployment name: {"component": ..., "args": [...], "env": {NAME: value}}}.
Values come from the ConfigMaps (envFrom) and `env` entries, with
secretKeyRef resolved from Secrets rendered in the same output; a Secret the
chart does not render (an existingSecret) gets a stand-in value of the right
shape, so `tern config check` can still judge the key.

Usage: chart-env.py RENDERED.yaml [--shell DEPLOYMENT | --check TERN_BINARY]
  --shell prints that Deployment's environment as NAME=value lines
  (values shell-quoted), for `eval` with `export`.
  --check runs `TERN_BINARY config check` with exactly each Deployment's
  environment (nothing inherited) and fails if any is rejected.
"""
import base64
import json
import shlex
import subprocess
import sys

import yaml

STAND_INS = {
    "TERN_DATABASE_URL": "postgres://standin:standin@database.invalid:5432/tern",
    "TERN_NATS_URL": "nats://standin:standin@nats.invalid:4222",
}


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def main():
    docs = load(sys.argv[1])
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
    secrets = {}
    for d in docs:
        if d["kind"] == "Secret":
            data = dict(d.get("stringData") or {})
            for k, v in (d.get("data") or {}).items():
                data[k] = base64.b64decode(v).decode()
            secrets[d["metadata"]["name"]] = data
    out = {}
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        (c,) = d["spec"]["template"]["spec"]["containers"]
        env = {}
        for src in c.get("envFrom") or []:
            ref = src.get("configMapRef") or src.get("secretRef")
            store = configmaps if "configMapRef" in src else secrets
            prefix = src.get("prefix", "")
            for k, v in store[ref["name"]].items():
                env[prefix + k] = str(v)
        for e in c.get("env") or []:
            name = e["name"]
            if "value" in e:
                env[name] = str(e["value"])
                continue
            vf = e.get("valueFrom") or {}
            if "secretKeyRef" in vf:
                r = vf["secretKeyRef"]
                val = secrets.get(r["name"], {}).get(r["key"])
                env[name] = val if val is not None else STAND_INS.get(name, "standin")
            elif "configMapKeyRef" in vf:
                r = vf["configMapKeyRef"]
                env[name] = configmaps[r["name"]][r["key"]]
            else:
                env[name] = "standin"
        comp = d["metadata"]["labels"].get("app.kubernetes.io/component", "")
        out[d["metadata"]["name"]] = {"component": comp, "args": c.get("args") or [], "env": env}
    if len(sys.argv) > 3 and sys.argv[2] == "--shell":
        want = sys.argv[3]
        match = [v for k, v in out.items() if k == want or v["component"] == want]
        if len(match) != 1:
            sys.exit(f"no single Deployment named or with component {want!r}")
        for k, v in sorted(match[0]["env"].items()):
            print(f"{k}={shlex.quote(v)}")
        return
    if len(sys.argv) > 3 and sys.argv[2] == "--check":
        failed = 0
        for name, dep in sorted(out.items()):
            env = {"PATH": "/usr/bin:/bin", **dep["env"]}
            r = subprocess.run([sys.argv[3], "config", "check"], env=env, capture_output=True, text=True)
            if r.returncode != 0 or "config ok" not in r.stdout:
                failed += 1
                print(f"FAIL {name} ({' '.join(dep['args'])}): {r.stderr.strip()}", file=sys.stderr)
            else:
                print(f"ok   {name}: {len(dep['env'])} variables accepted by `tern config check`")
        sys.exit(1 if failed else 0)
    json.dump(out, sys.stdout, indent=2, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
