#!/usr/bin/env bash
# Cost of the inbound checks (SPF, DKIM, ARC, DMARC): Postfix's smtp-source
# accepted msg/s into ingress with TERN_INBOUND_CHECKS on vs off, in one run,
# warm DNS cache, on loopback.
#
#   deploy/bench/ingress/auth.sh
#
# Unbound serves bench.test (SPF `v=spf1 ip4:127.0.0.0/8 -all`, DMARC
# `p=none`); the resolver service asks it; the mailbox answers recipient
# checks for rcpt@bench.test (no queue runs: messages stay on the spool).
# The client, 127.0.0.1, is not trusted, so every message is checked (SPF of
# HELO and MAIL FROM, DKIM/ARC: none, DMARC: pass). Each mode gets a warm-up
# run first (fills the caches), then the measured run; both modes use the
# same nats-server, resolver and mailbox.
#
# Bounded: fixed counts, TIMEOUT per smtp-source run (default 300 s).
# Knobs: SESSIONS MESSAGES SIZE TIMEOUT, TERN_BIN (default target/release/tern,
# built when missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
SESSIONS=${SESSIONS:-20}
MESSAGES=${MESSAGES:-5000}
SIZE=${SIZE:-4096}
TIMEOUT=${TIMEOUT:-300}
COUNT=$MESSAGES

nats_bin=$("$root/scripts/deps.sh")
tern=${TERN_BIN:-$root/target/release/tern}
if [ ! -x "$tern" ]; then
  (cd "$root" && cargo build --release -q -p tern --locked)
fi

work=$(mktemp -d)
pids=()
# shellcheck source=deploy/bench/lib.sh
. "$root/deploy/bench/lib.sh"
trap 'stop_all; rm -rf "$work"' EXIT

start_unbound \
  'bench.test. 3600 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"' \
  '_dmarc.bench.test. 3600 IN TXT "v=DMARC1; p=none"' \
  'helo.bench.test. 3600 IN A 127.0.0.1' \
  'helo.bench.test. 3600 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"'
wait_until unbound listening 127.0.0.1 "$ub_port"
start_nats "$work"

r_grpc=$(free_port); m_grpc=$(free_port)
base=(env -i PATH="$PATH" TERN_NATS_URL="nats://127.0.0.1:$nats_port" TERN_DATA_DIR="$work/data"
  TERN_HOSTNAME=mx.bench.test TERN_LOCAL_DOMAINS=bench.test
  TERN_RESOLVER_GRPC_LISTEN="127.0.0.1:$r_grpc" TERN_DNS_NAMESERVERS="127.0.0.1:$ub_port"
  TERN_MAILBOX_GRPC_LISTEN="127.0.0.1:$m_grpc"
  TERN_RESOLVER_URL="http://127.0.0.1:$r_grpc" TERN_MAILBOX_URL="http://127.0.0.1:$m_grpc")
for name in resolver mailbox; do
  admin=$(free_port)
  key="TERN_$(echo "$name" | tr '[:lower:]' '[:upper:]')_ADMIN_LISTEN"
  "${base[@]}" "$key=127.0.0.1:$admin" TERN_IMAP_LISTEN=127.0.0.1:0 TERN_IMAPS_LISTEN=127.0.0.1:0 \
    TERN_POP3_LISTEN=127.0.0.1:0 TERN_POP3S_LISTEN=127.0.0.1:0 \
    "$tern" "$name" >"$work/$name.log" 2>&1 &
  pids+=($!)
  wait_until "$name ready" ready "$admin"
done
echo bench-password | "${base[@]}" "$tern" user add rcpt@bench.test >/dev/null

# Start ingress with checks on or off; sets ingress_pid, smtp_port, admin_port.
start_ingress() { # true|false
  smtp_port=$(free_port); admin_port=$(free_port)
  "${base[@]}" TERN_INBOUND_CHECKS="$1" \
    TERN_SMTP_LISTEN="127.0.0.1:$smtp_port" TERN_SUBMISSION_LISTEN= TERN_SUBMISSIONS_LISTEN= TERN_API_LISTEN= \
    TERN_INGRESS_GRPC_LISTEN=127.0.0.1:0 TERN_INGRESS_ADMIN_LISTEN="127.0.0.1:$admin_port" \
    TERN_MAX_CONNECTIONS_PER_IP=20000 \
    "$tern" ingress >"$work/ingress-$1.log" 2>&1 &
  ingress_pid=$!
  wait_until "ingress ready" ready "$admin_port"
}

# One smtp-source run; prints messages per second.
source_rate() {
  local start end
  start=$(date +%s.%N)
  timeout "$TIMEOUT" smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -M helo.bench.test \
    -f sender@bench.test -t rcpt@bench.test "127.0.0.1:$smtp_port" >/dev/null
  end=$(date +%s.%N)
  python3 -c "print(f'{$MESSAGES/($end-$start):.0f}')"
}
accepted() { curl -s "http://127.0.0.1:$admin_port/metrics" | awk '$1=="tern_smtp_replies_total{code=\"250\"}"{print $2}'; }
checked() { curl -s "http://127.0.0.1:$admin_port/metrics" | awk -F' ' '/^tern_inbound_checks_total/{s+=$2} END{print s+0}'; }

echo "smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE, loopback, $(nproc) cores, $(basename "$(dirname "$tern")") build"
declare -A result
for mode in false true; do
  start_ingress "$mode"
  source_rate >/dev/null # warm-up: caches, connections, JIT-free but page cache
  result[$mode]=$(source_rate)
  echo "inbound_checks=$mode: ${result[$mode]} msg/s (messages checked: $(checked), 250 replies: $(accepted))"
  kill "$ingress_pid"; wait "$ingress_pid" 2>/dev/null || true
done
python3 -c "off=${result[false]}; on=${result[true]}; print(f'checks on / off: {on/off:.3f} (cost {100*(1-on/off):.1f} %)')"
