#!/usr/bin/env bash
# Checks the Helm chart (helm/tern) the way CI does:
#  1. helm lint --strict over the default values and every value set in
#     helm/tern/ci/*-values.yaml;
#  2. helm template of each, every manifest validated with PyPI's
#     kubernetes-validate (strict, against the oldest and newest Kubernetes the
#     chart supports);
#  3. each Deployment's rendered environment given to `tern config check`
#     (nothing inherited), so the chart only sets keys the binary accepts;
#  4. values the schema must reject, and the chart's config keys compared with
#     the keys `tern config check` knows.
# The official NATS chart cannot be downloaded here, so the checks render a
# copy of the chart with its `nats` dependency left out (the Tern objects do
# not depend on it; with nats.enabled=true they point at <release>-nats).
# Tools come from scripts/helm-deps.sh; the tern binary is $TERN_BIN, else
# target/debug/tern (built with `cargo build -p tern` when missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
helm=$(scripts/helm-deps.sh)
py="$root/.venv/bin/python"
kv="$root/.venv/bin/kubernetes-validate"
tern="${TERN_BIN:-$root/target/debug/tern}"
if [ ! -x "$tern" ]; then
  cargo build -q -p tern --locked
  tern="$root/target/debug/tern"
fi
K8S_VERSIONS="1.27.0 1.37.0"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r helm/tern "$tmp/tern"
"$py" - "$tmp/tern/Chart.yaml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
open(p, "w").write(s[: s.index("dependencies:")] if "dependencies:" in s else s)
PY
chart="$tmp/tern"
# A second copy renders NOTES.txt as a ConfigMap (helm template skips NOTES,
# and helm install --dry-run needs a cluster).
mkdir -p "$tmp/notes" && cp -r "$chart" "$tmp/notes/tern"
{ echo '{{- define "tern.notesCheck" -}}'; cat "$chart/templates/NOTES.txt"; echo '{{- end }}'; } \
  >"$tmp/notes/tern/templates/_notes-check.tpl"
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes-check}\ndata:\n  notes: |\n{{ include "tern.notesCheck" . | indent 4 }}\n' \
  >"$tmp/notes/tern/templates/notes-check.yaml"

fail=0
sets=("default")
for f in helm/tern/ci/*-values.yaml; do sets+=("$f"); done
for set in "${sets[@]}"; do
  name=$(basename "$set" .yaml)
  args=()
  [ "$set" = default ] || args=(-f "$set")
  echo "== $name"
  if ! "$helm" lint --strict "$chart" "${args[@]}" >"$tmp/lint.out" 2>&1; then
    cat "$tmp/lint.out"; fail=1; continue
  fi
  out="$tmp/$name.yaml"
  if ! "$helm" template tern "$chart" --namespace mail "${args[@]}" >"$out" 2>"$tmp/tpl.err"; then
    cat "$tmp/tpl.err"; fail=1; continue
  fi
  kinds=$(grep -E '^kind: ' "$out" | sort | uniq -c | awk '{printf "%s×%s ", $3, $1}')
  echo "   rendered: $kinds"
  for v in $K8S_VERSIONS; do
    # CRD kinds (KEDA ScaledObject, ServiceMonitor, PrometheusRule) have no schema there;
    # deploy/chart-crds.py checks those below.
    if "$kv" --strict --quiet -k "$v" "$out" >"$tmp/kv.out" 2>&1 \
        && ! grep -v "Couldn't find schema for kind \(ScaledObject\|ServiceMonitor\|PrometheusRule\) " "$tmp/kv.out" | grep -q .; then
      echo "   kubernetes-validate $v: ok"
    else
      echo "   kubernetes-validate $v: FAILED"; cat "$tmp/kv.out"; fail=1
    fi
  done
  "$py" deploy/chart-crds.py "$out" | sed 's/^/   /'; [ "${PIPESTATUS[0]}" = 0 ] || fail=1
  if "$helm" template tern "$tmp/notes/tern" --namespace mail "${args[@]}" --show-only templates/notes-check.yaml >"$tmp/notes.yaml" 2>&1 \
      && "$py" -c 'import sys, yaml; n = yaml.safe_load(open(sys.argv[1]))["data"]["notes"]; assert "tern user add" in n and "swaks" in n' "$tmp/notes.yaml"; then
    echo "   NOTES.txt: renders ($(grep -c . "$tmp/notes.yaml") lines)"
  else
    echo "   NOTES.txt: FAILED"; cat "$tmp/notes.yaml"; fail=1
  fi
  "$py" deploy/chart-env.py "$out" --check "$tern" | sed 's/^/   /'; [ "${PIPESTATUS[0]}" = 0 ] || fail=1
done

# Values the schema must reject at install time.
echo "== values that must be rejected"
bad=(
  "config.smtp_lisen=0.0.0.0:25"            # not a Tern key
  "config.log_format=yaml"                  # not text/json
  "delivery.replicas=-1"
  "streamReplicas=7"                        # TERN_NATS_REPLICAS is 1..5
  "shutdownGraceSeconds=0"
  "ingress.service.externalTrafficPolicy=Nowhere"
  "delivery.keda.lagThreshold=0"
  "database.url=mysql://x"
  "nats.enabled=false"                      # and no external URL
  "natsClient.credsSecret=c,natsClient.nkeySecret=n"   # one NATS identity
  "natsClient.tls.existingSecret=t,natsClient.tls.caKey="  # a Secret with nothing used
  "ingress.httpIngress.enabled=true"       # and no host
  "config.public_url=links.example.com"    # not a URL
)
for b in "${bad[@]}"; do
  if "$helm" template tern "$chart" --set "$b" >/dev/null 2>"$tmp/bad.err"; then
    echo "   NOT rejected: --set $b"; fail=1
  else
    echo "   rejected: --set $b: $(grep -v '^Error: values\|^tern:$' "$tmp/bad.err" | head -n1 | sed 's/^- //' | cut -c1-110)"
  fi
done

# A key the binary does not know, slipped in through extraEnv, must fail the
# environment check (the schema cannot know every service's keys).
"$helm" template tern "$chart" --set 'delivery.extraEnv[0].name=TERN_DELIVERY_CONCURENCY' \
  --set-string 'delivery.extraEnv[0].value=8' >"$tmp/typo.yaml"
if "$py" deploy/chart-env.py "$tmp/typo.yaml" --check "$tern" >/dev/null 2>"$tmp/typo.err"; then
  echo "   NOT rejected: delivery.extraEnv TERN_DELIVERY_CONCURENCY"; fail=1
else
  echo "   rejected by tern config check: $(head -n1 "$tmp/typo.err" | cut -c1-120)"
fi

# Every key the schema offers under `config` must be one the binary knows.
echo "== config keys in values.schema.json vs tern config check"
env -i PATH=/usr/bin:/bin "$tern" config check | sed -n 's/^TERN_\([A-Z0-9_]*\)=.*/\1/p' | tr 'A-Z' 'a-z' >"$tmp/known"
"$py" - helm/tern/values.schema.json "$tmp/known" <<'PY' || fail=1
import json, sys
keys = set(json.load(open(sys.argv[1]))["properties"]["config"]["properties"])
known = set(open(sys.argv[2]).read().split())
unknown = sorted(keys - known)
if unknown:
    sys.exit(f"   schema offers keys tern does not know: {unknown}")
print(f"   {len(keys)} config keys, all known to tern")
PY

if [ "$fail" = 0 ]; then echo "helm checks: all passed"; else echo "helm checks: FAILED"; fi
exit "$fail"
