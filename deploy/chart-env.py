#!/usr/bin/env python3
"""The environment each Deployment of a rendered Tern chart gives its container.

Reads `helm template` output (a multi-document YAML file) and prints, as JSON,
{deployment name: {"component": ..., "args": [...], "env": {NAME: value}}}.
Values come from the ConfigMaps (envFrom) and `env` entries, with
secretKeyRef resolved from Secrets rendered in the same output; a Secret the
chart does not render (an existingSecret) gets a stand-in value of the right
shape, so `tern config check` can still judge the key. With --check, a
variable naming a file under a mounted volume gets a real file: the content
of a ConfigMap rendered in the same output, or for a Secret the chart does
not render, a stand-in where FILE_STAND_INS has one (other paths stay as
they are, for keys whose files are only read when a service starts).

Usage: chart-env.py RENDERED.yaml [--shell DEPLOYMENT | --check TERN_BINARY]
  --shell prints that Deployment's environment as NAME=value lines
  (values shell-quoted), for `eval` with `export`.
  --check runs `TERN_BINARY config check` with exactly each Deployment's
  environment (nothing inherited) and fails if any is rejected.
"""
import base64
import json
import shlex
import os
import subprocess
import sys
import tempfile

import yaml

STAND_INS = {
    "TERN_DATABASE_URL": "postgres://standin:standin@database.invalid:5432/tern",
    "TERN_NATS_URL": "nats://standin:standin@nats.invalid:4222",
}

# Files `tern config check` reads at once, for Secrets the chart does not render.
FILE_STAND_INS = {
    "TERN_SECRET_FILE": "standin-cluster-secret-of-at-least-32-bytes",
}


def mounted_files(pod, container, env, configmaps, secrets, workdir):
    """Rewrite env values that name files in mounted volumes to real files."""
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    mounts = {m["mountPath"].rstrip("/"): m["name"] for m in container.get("volumeMounts") or []}
    for name, value in list(env.items()):
        head, _, file = value.rpartition("/")
        vol = volumes.get(mounts.get(head, ""))
        if not vol or not file:
            continue
        content = None
        if "configMap" in vol:
            content = configmaps.get(vol["configMap"]["name"], {}).get(file)
        elif "secret" in vol:
            items = {i["path"]: i["key"] for i in vol["secret"].get("items") or []}
            data = secrets.get(vol["secret"]["secretName"])
            if data is not None:
                content = data.get(items.get(file, file))
            else:
                content = FILE_STAND_INS.get(name)
        if content is None:
            continue
        path = os.path.join(workdir, name)
        with open(path, "w") as f:
            f.write(content)
        env[name] = path


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
        out[d["metadata"]["name"]] = {"component": comp, "args": c.get("args") or [], "env": env,
                                      "pod": d["spec"]["template"]["spec"], "container": c}
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
        workdir = tempfile.mkdtemp(prefix="chart-env-")
        for name, dep in sorted(out.items()):
            env = {"PATH": "/usr/bin:/bin", **dep["env"]}
            files = os.path.join(workdir, name)
            os.mkdir(files)
            mounted_files(dep["pod"], dep["container"], env, configmaps, secrets, files)
            r = subprocess.run([sys.argv[3], "config", "check"], env=env, capture_output=True, text=True)
            if r.returncode != 0 or "config ok" not in r.stdout:
                failed += 1
                print(f"FAIL {name} ({' '.join(dep['args'])}): {r.stderr.strip()}", file=sys.stderr)
            else:
                print(f"ok   {name}: {len(dep['env'])} variables accepted by `tern config check`")
        sys.exit(1 if failed else 0)
    for dep in out.values():
        del dep["pod"], dep["container"]
    json.dump(out, sys.stdout, indent=2, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
