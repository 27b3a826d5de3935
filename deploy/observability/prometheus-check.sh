#!/usr/bin/env bash
# Scripted check: the alerting rules pass `promtool check rules` and their
# unit tests, then Debian's prometheus scrapes every service of a running
# `tern up`, and what it scraped agrees with `tern queue stats`.
#
# Usage: deploy/observability/prometheus-check.sh [path/to/tern]
# Everything binds 127.0.0.1 on free ports and is stopped on exit.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tern=${1:-$root/target/debug/tern}
nats=${TERN_NATS_SERVER:-$root/.venv/bin/nats-server}
command -v prometheus >/dev/null || { echo "prometheus not installed (Debian package prometheus; scripts/deps.sh --test)" >&2; exit 1; }
[ -x "$tern" ] || { echo "no tern binary at $tern (cargo build -p tern)" >&2; exit 1; }

# The alerting rules the chart ships: valid, and their unit tests pass.
promtool check rules "$root/helm/tern/files/alerts.yaml"
promtool test rules "$root/deploy/observability/alerts-test.yaml"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url, what
  for _ in $(seq 1 200); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for $2 ($1)" >&2; return 1
}

# Every listener on a free port; admin ports remembered for Prometheus.
declare -A env
for k in SMTP SUBMISSION SUBMISSIONS IMAP IMAPS POP3 POP3S; do env[TERN_${k}_LISTEN]=127.0.0.1:$(free_port); done
admins=()
for s in INGRESS QUEUE RESOLVER DELIVERY MAILBOX; do
  env[TERN_${s}_GRPC_LISTEN]=127.0.0.1:$(free_port)
  env[TERN_${s}_ADMIN_LISTEN]=127.0.0.1:$(free_port)
  admins+=("${env[TERN_${s}_ADMIN_LISTEN]}")
done
env[TERN_MANAGED_NATS_LISTEN]=127.0.0.1:$(free_port)
env[TERN_DATA_DIR]=$work/data
env[TERN_NATS_SERVER]=$nats
env[TERN_TRUSTED_NETWORKS]=127.0.0.0/8
exports=()
for k in "${!env[@]}"; do exports+=("$k=${env[$k]}"); done

env -i PATH="$PATH" HOME="$work" "${exports[@]}" "$tern" up >"$work/up.out" 2>"$work/up.err" &
pids+=($!)
for a in "${admins[@]}"; do wait_http "http://$a/readyz" "tern up"; done

tern_cli() { env -i PATH="$PATH" HOME="$work" "${exports[@]}" "$tern" "$@"; }

# A destination on hold keeps its jobs without DNS or a remote peer.
tern_cli queue hold blackhole.test >/dev/null
# The hold reaches the queue through a key-value watch; wait until it shows.
for _ in $(seq 1 100); do
  tern_cli queue stats | grep -q '^blackhole.test .*on hold' && break
  sleep 0.1
done
smtp=${env[TERN_SMTP_LISTEN]}
python3 - "$smtp" <<'PY'
import smtplib, sys
host, port = sys.argv[1].rsplit(":", 1)
s = smtplib.SMTP(host, int(port), timeout=30)
for i in range(5):
    s.sendmail("app@example.org", [f"user{i}@blackhole.test"], b"Subject: held\r\n\r\nbody\r\n")
s.quit()
PY

# Prometheus scraping every admin port each second.
prom_port=$(free_port)
{
  echo "global: { scrape_interval: 1s, evaluation_interval: 1s }"
  echo "scrape_configs:"
  echo "  - job_name: tern"
  echo "    static_configs:"
  echo "      - targets: [$(IFS=,; echo "${admins[*]}")]"
} >"$work/prometheus.yml"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prom" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prom.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$prom_port/-/ready" prometheus

query() { # PromQL -> first value or empty
  curl -fsS "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=$1" |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")'
}

expected_held=$(tern_cli queue stats | awk '$1=="blackhole.test"{print $4}')
[ "$expected_held" = 5 ] || { echo "tern queue stats: expected 5 held for blackhole.test, got '$expected_held'" >&2; tern_cli queue stats >&2; exit 1; }
ok=""
for _ in $(seq 1 150); do
  up=$(query 'sum(up{job="tern"})')
  held=$(query 'max(tern_queue_jobs{destination="blackhole.test",state="held"})')
  received=$(query 'max(tern_queue_messages_received_total)')
  if [ "$up" = 5 ] && [ "$held" = "$expected_held" ] && [ "$received" = 5 ]; then ok=1; break; fi
  sleep 0.2
done
if [ -z "$ok" ]; then
  echo "Prometheus disagrees: up=$up held=$held received=$received (tern queue stats held=$expected_held)" >&2
  exit 1
fi
echo "prometheus-check: 5/5 services scraped; held=$held and received=$received agree with tern queue stats"
