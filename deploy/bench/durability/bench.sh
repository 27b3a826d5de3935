#!/usr/bin/env bash
# Durability benchmark: what fsync-per-write NATS costs, side by side with
# Postfix in one run, on one machine, loopback only, bounded.
#
#   smtp-source -s 20 -m 20000 -l 4096 -> `tern up` (all five services,
#       its managed nats-server with TERN_MANAGED_NATS_SYNC=always) -> smtp-sink
#   smtp-source -s 20 -m 20000 -l 4096 -> Postfix (fsyncs its queue files
#       before 250) relaying -> smtp-sink
#
#   deploy/bench/durability/bench.sh                     # defaults below
#   SYNCS="always 2m" MESSAGES=5000 deploy/bench/durability/bench.sh
#   WRITES=2000 deploy/bench/durability/bench.sh         # also count writes
#   BASE_TERN=/tmp/tern-before deploy/bench/durability/bench.sh
#                          # also an earlier build, same run (before/after)
#
# Accepted msg/s: messages / seconds smtp-source ran (each 250 came after
# the message was on disk at Postfix, in JetStream at Tern). End to end
# msg/s: messages / seconds from the start of smtp-source until smtp-sink
# counted every message. SYNCS lists the managed nats-server sync policies
# to run Tern with (`always`: fsync before every ack; a duration such as
# `2m`, nats-server's own default, for comparison).
#
# WRITES=N (0: off) runs N more messages through `tern up` on a nats-server
# started by this script with the same `sync_interval: always` and its
# monitoring port, and prints per stream how many records each message
# added (stream sequence deltas: publishes, KV writes, purge markers) and,
# under strace, the nats-server's fsync/fdatasync calls per message.
# Needs root (Postfix), postfix, unbound, python3, curl, strace for WRITES;
# scripts/deps.sh --test installs them. Every wait has a limit (TIMEOUT,
# default 600 s).
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
SESSIONS=${SESSIONS:-20}
MESSAGES=${MESSAGES:-20000}
SIZE=${SIZE:-4096}
SYNCS=${SYNCS:-"always"}
WRITES=${WRITES:-0}
BASE_TERN=${BASE_TERN:-}
TIMEOUT=${TIMEOUT:-600}
UNBOUND=${UNBOUND:-/usr/sbin/unbound}
for bin in "$UNBOUND" /usr/sbin/smtp-sink /usr/sbin/smtp-source /usr/sbin/postfix; do
  [ -x "$bin" ] || { echo "needs $bin (scripts/deps.sh --test)" >&2; exit 1; }
done

nats_bin=$("$root/scripts/deps.sh")
(cd "$root" && cargo build --release -q -p tern)
target=${CARGO_TARGET_DIR:-$root/target}
tern="$target/release/tern"

work=$(mktemp -d)
chmod 755 "$work"
pids=()
# shellcheck source=deploy/bench/lib.sh
. "$root/deploy/bench/lib.sh"
cleanup() {
  "$root/deploy/bench/ingress/postfix-instance.sh" stop "$work/postfix" || true
  stop_all
  rm -rf "$work"
}
trap cleanup EXIT

# smtp-source COUNT messages into PORT; prints "start accept_seconds".
source_run() { # port, count
  local start
  start=$(now)
  timeout "$TIMEOUT" smtp-source -s "$SESSIONS" -m "$2" -l "$SIZE" \
    -f sender@origin.bench.test -t rcpt@remote.bench.test "127.0.0.1:$1" >/dev/null
  echo "$start $(secs_since "$start")"
}
report() { # name, accept seconds, end-to-end seconds, count
  printf '%-26s %9s %9s %9s %9s\n' "$1" "$2" "$(rate "$4" "$2")" "$3" "$(rate "$4" "$3")"
}

# DNS: remote.bench.test MX -> 127.0.0.1, where smtp-sink listens.
start_unbound "remote.bench.test. 3600 IN MX 10 mx.bench.test." "mx.bench.test. 3600 IN A 127.0.0.1"

postfix_run() {
  local dir="$work/postfix" pf_port sink_port
  pf_port=$(free_port); sink_port=$(free_port)
  start_sink 127.0.0.1 "$sink_port" "$work/pfsink.out"
  "$root/deploy/bench/ingress/postfix-instance.sh" start "$dir" "$pf_port" "$sink_port"
  wait_until "postfix smtpd" listening 127.0.0.1 "$pf_port"
  local start acc e2e
  read -r start acc < <(source_run "$pf_port" "$MESSAGES")
  e2e=$(wait_sink "$work/pfsink.out" "$MESSAGES" "$start")
  report "postfix (fsync per file)" "$acc" "$e2e" "$MESSAGES"
  echo "$MESSAGES/$acc $MESSAGES/$e2e" >"$work/postfix.rate"
  "$root/deploy/bench/ingress/postfix-instance.sh" stop "$dir"
  stop_run
}

tern_run() { # sync policy, label (file name of the rate)
  local dir="$work/$2-$1" sink_port
  sink_port=$(free_port)
  start_sink 127.0.0.1 "$sink_port" "$dir.sink"
  start_up "$dir" "$sink_port" TERN_MANAGED_NATS_SYNC="$1"
  local start acc e2e
  read -r start acc < <(source_run "$smtp_port" "$MESSAGES")
  e2e=$(wait_sink "$dir.sink" "$MESSAGES" "$start")
  report "$2 up, sync $1" "$acc" "$e2e" "$MESSAGES"
  echo "$MESSAGES/$acc $MESSAGES/$e2e" >"$work/$2-$1.rate"
  stop_run
}

# Records per message on each stream, and fsyncs per message, for WRITES
# messages through `tern up` on an external nats-server with
# `sync_interval: always`.
count_writes() {
  local dir="$work/writes" sink_port mport
  mkdir -p "$dir"
  mport=$(free_port)
  printf 'jetstream { sync_interval: "always" }\n' >"$dir/sync.conf"
  start_nats "$dir" -c "$dir/sync.conf" -m "$mport"
  sink_port=$(free_port)
  start_sink 127.0.0.1 "$sink_port" "$dir/sink.out"
  start_up "$dir" "$sink_port" TERN_NATS_URL="nats://127.0.0.1:$nats_port"
  # Warm-up: streams, consumers and the MX route exist before counting.
  local start acc
  read -r start acc < <(source_run "$smtp_port" 20)
  wait_sink "$dir/sink.out" 20 "$start" >/dev/null
  sleep 2 # let the warm-up's trailing writes (results, purges) land
  curl -sf "http://127.0.0.1:$mport/jsz?streams=true" >"$dir/before.json"
  local tracer=()
  if command -v strace >/dev/null; then
    strace -f -c -e trace=fsync,fdatasync,sync_file_range -o "$dir/strace.out" -p "$nats_pid" &
    tracer=($!)
    sleep 1
  fi
  read -r start acc < <(source_run "$smtp_port" "$WRITES")
  wait_sink "$dir/sink.out" $((WRITES + 20)) "$start" >/dev/null
  sleep 3 # the last results, completions and purges
  curl -sf "http://127.0.0.1:$mport/jsz?streams=true" >"$dir/after.json"
  if [ ${#tracer[@]} -gt 0 ]; then
    kill -INT "${tracer[0]}" 2>/dev/null || true
    wait "${tracer[0]}" 2>/dev/null || true
  fi
  echo
  echo "JetStream records per message ($WRITES messages, 1 local-part, remote domain):"
  python3 - "$dir/before.json" "$dir/after.json" "$WRITES" <<'PY'
import json, sys
def seqs(path):
    d = json.load(open(path))
    out = {}
    for acc in d.get("account_details", []):
        for s in acc.get("stream_detail", []):
            out[s["name"]] = s["state"]["last_seq"]
    return out
before, after, n = seqs(sys.argv[1]), seqs(sys.argv[2]), int(sys.argv[3])
total = 0
for name in sorted(after):
    delta = after[name] - before.get(name, 0)
    total += delta
    print(f"  {name:<24} {delta / n:6.2f}")
print(f"  {'total':<24} {total / n:6.2f}")
PY
  if [ -f "$dir/strace.out" ]; then
    awk -v n="$WRITES" '$NF ~ /^(fsync|fdatasync|sync_file_range)$/ {
        printf "  nats-server %-16s %6.2f per message\n", $NF, $4 / n }' "$dir/strace.out"
  fi
  stop_run
}

echo "smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE -> ... -> smtp-sink; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-26s %9s %9s %9s %9s\n' system "accept s" "accept/s" "e2e s" "e2e/s"
labels=(tern)
postfix_run
if [ -n "$BASE_TERN" ]; then
  labels=(base tern)
  for s in $SYNCS; do
    tern_bin=$tern; tern=$BASE_TERN
    tern_run "$s" base
    tern=$tern_bin
  done
fi
for s in $SYNCS; do tern_run "$s" tern; done
read -r pf_acc pf_e2e <"$work/postfix.rate"
for l in "${labels[@]}"; do
  for s in $SYNCS; do
    read -r t_acc t_e2e <"$work/$l-$s.rate"
    python3 -c "print(f'$l (sync $s) / postfix: accepted {($t_acc)/($pf_acc):.2f}x, end to end {($t_e2e)/($pf_e2e):.2f}x')"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$WRITES" -gt 0 ] && count_writes
exit 0
