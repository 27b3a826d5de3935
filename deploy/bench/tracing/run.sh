#!/usr/bin/env bash
# What tracing costs at full load: the same `tern up` (release build) accepts
# and delivers N messages to a local mailbox, with span export over OTLP off
# and on (every span sampled, exported to an OTLP sink on loopback), in
# alternating rounds of one run. Load: Postfix's smtp-source, 20 sessions,
# 4 KiB messages. Reports messages/s from the first connection until the
# mailbox has stored the last message, and the on/off ratio.
#
# Usage: deploy/bench/tracing/run.sh [messages per run, default 5000] [rounds, default 2]
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
N=${1:-5000}
ROUNDS=${2:-2}
[ "$N" -le 50000 ] || { echo "at most 50000 messages per run" >&2; exit 1; }
command -v smtp-source >/dev/null || { echo "smtp-source missing (Debian package postfix)" >&2; exit 1; }
cd "$root"
cargo build --release --locked -q -p tern --bin tern
cargo build --release --locked -q -p tern-testkit --example otlp_sink
target=${CARGO_TARGET_DIR:-$root/target}
tern=$target/release/tern
nats=${TERN_NATS_SERVER:-$root/.venv/bin/nats-server}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() { # mode -> prints msgs/s
  local mode=$1 work; work=$(mktemp -d)
  local -a env=(TERN_DATA_DIR="$work/data" TERN_NATS_SERVER="$nats" TERN_LOG=warn
    TERN_MANAGED_NATS_LISTEN=127.0.0.1:$(free_port))
  for k in SMTP SUBMISSION SUBMISSIONS IMAP IMAPS POP3 POP3S; do env+=(TERN_${k}_LISTEN=127.0.0.1:$(free_port)); done
  for s in INGRESS QUEUE RESOLVER DELIVERY MAILBOX; do
    env+=(TERN_${s}_GRPC_LISTEN=127.0.0.1:$(free_port) TERN_${s}_ADMIN_LISTEN=127.0.0.1:$(free_port))
  done
  local sink_pid="" endpoint=""
  if [ "$mode" = on ]; then
    "$target/release/examples/otlp_sink" >"$work/sink.out" 2>"$work/sink.err" &
    sink_pid=$!
    for _ in $(seq 1 100); do endpoint=$(head -n1 "$work/sink.out" 2>/dev/null || true); [ -n "$endpoint" ] && break; sleep 0.05; done
    env+=(OTEL_EXPORTER_OTLP_ENDPOINT="$endpoint" OTEL_TRACES_SAMPLER=always_on)
  fi
  env -i PATH="$PATH" HOME="$work" "${env[@]}" "$tern" up >"$work/up.out" 2>"$work/up.err" &
  local up_pid=$!
  local smtp mailbox_admin mailbox_grpc
  for _ in $(seq 1 300); do grep -q '^tern is up' "$work/up.out" && break; sleep 0.1; done
  smtp=$(awk '$1=="smtp"{print $2}' "$work/up.out")
  mailbox_admin=$(awk '$1=="mailbox" && $2=="admin"{print $3}' "$work/up.out")
  mailbox_grpc=$(awk '$1=="mailbox" && $2=="grpc"{print $3}' "$work/up.out")
  echo bench | env -i PATH="$PATH" TERN_MAILBOX_URL="http://$mailbox_grpc" "$tern" user add bench@localhost >/dev/null
  local start end delivered=0
  start=$(date +%s.%N)
  smtp-source -s 20 -m "$N" -l 4096 -f sender@example.org -t bench@localhost "$smtp" 2>"$work/source.err" || true
  for _ in $(seq 1 1200); do
    delivered=$(curl -fsS "http://$mailbox_admin/metrics" | awk '/^tern_mailbox_deliveries_total\{outcome="delivered"\}/{print $2}')
    [ "${delivered:-0}" -ge "$N" ] && break
    sleep 0.1
  done
  end=$(date +%s.%N)
  kill -TERM "$up_pid"; wait "$up_pid" || true
  [ -n "$sink_pid" ] && { kill -INT "$sink_pid"; wait "$sink_pid" || true; }
  [ "${delivered:-0}" -ge "$N" ] || { echo "only ${delivered:-0}/$N delivered ($mode)" >&2; rm -rf "$work"; exit 1; }
  python3 -c "print(round($N / ($end - $start)))"
  rm -rf "$work"
}

off=(); on=()
for r in $(seq 1 "$ROUNDS"); do
  off+=("$(run off)"); on+=("$(run on)")
  echo "round $r: tracing off ${off[-1]} msg/s, on ${on[-1]} msg/s" >&2
done
python3 - "${off[*]}" "${on[*]}" <<'PY'
import sys, statistics
off = [float(x) for x in sys.argv[1].split()]
on = [float(x) for x in sys.argv[2].split()]
mo, mn = statistics.median(off), statistics.median(on)
print(f"tracing off: median {mo:.0f} msg/s {off}")
print(f"tracing on (OTLP, always_on): median {mn:.0f} msg/s {on}")
print(f"on/off throughput ratio: {mn/mo:.3f} (cost {100*(1-mn/mo):.1f}%)")
PY
