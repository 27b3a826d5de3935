#!/usr/bin/env bash
# Ingress throughput and idle-connection memory, side by side with Postfix,
# on loopback, in one run.
#
#   deploy/bench/ingress/bench.sh
#
# 1. Throughput: Postfix's smtp-source (-s 20 -m 20000 -l 4096, then again
#    with -d: all messages of a session over one connection) against
#    (a) Tern ingress (release build of `tern-ingress-serve`) with a real,
#        file-backed JetStream spool: 250 only after the spool ack;
#    (b) a private Postfix instance (postfix-instance.sh): 250 after the
#        queue file is written and fsync'd; then discarded.
#    Both relay for 127.0.0.1 (no recipient lookup on either side).
# 2. Memory: RSS of the ingress process with 10,000 idle SMTP connections
#    (after the greeting) minus its RSS before, per connection.
#
# Bounded: every run has a time limit (TIMEOUT, default 600 s) and fixed
# counts. Knobs: SESSIONS MESSAGES SIZE IDLE TIMEOUT.
# Needs root (Postfix), postfix, python3; scripts/deps.sh --test installs them.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
here=$(cd "$(dirname "$0")" && pwd)
SESSIONS=${SESSIONS:-20}
MESSAGES=${MESSAGES:-20000}
SIZE=${SIZE:-4096}
IDLE=${IDLE:-10000}
TIMEOUT=${TIMEOUT:-600}

nats_bin=$("$root/scripts/deps.sh")
(cd "$root" && cargo build --release -q -p tern-ingress --features bench-server --bin tern-ingress-serve)
serve="$root/target/release/tern-ingress-serve"
smtp_source=$(command -v smtp-source || echo /usr/sbin/smtp-source)

work=$(mktemp -d)
chmod 755 "$work"  # Postfix runs as the postfix user and must reach its data dir
pids=()
# shellcheck source=deploy/bench/lib.sh
. "$root/deploy/bench/lib.sh"
cleanup() {
  "$here/postfix-instance.sh" stop "$work/postfix" || true
  stop_all
  rm -rf "$work"
}
trap cleanup EXIT

nats_mon=$(free_port)
start_nats "$work" -m "$nats_mon"

tern_port=$(free_port); admin_port=$(free_port)
env -i PATH="$PATH" \
  TERN_NATS_URL="nats://127.0.0.1:$nats_port" \
  TERN_SMTP_LISTEN="127.0.0.1:$tern_port" \
  TERN_SUBMISSION_LISTEN= TERN_SUBMISSIONS_LISTEN= TERN_API_LISTEN= \
  TERN_INGRESS_GRPC_LISTEN=127.0.0.1:0 \
  TERN_INGRESS_ADMIN_LISTEN="127.0.0.1:$admin_port" \
  TERN_TRUSTED_NETWORKS=127.0.0.1/32 \
  TERN_MAX_CONNECTIONS_PER_IP=20000 \
  TERN_DATA_DIR="$work/tern" TERN_HOSTNAME=mx.bench TERN_LOCAL_DOMAINS=bench.local \
  "$serve" >"$work/tern.out" 2>"$work/tern.log" &
tern_pid=$!
pids+=($tern_pid)
wait_until "ingress ready" ready "$admin_port" || { cat "$work/tern.log" >&2; exit 1; }

pf_port=$(free_port)
"$here/postfix-instance.sh" start "$work/postfix" "$pf_port"
wait_until "postfix smtpd" listening 127.0.0.1 "$pf_port"

# smtp-source run; prints messages per second.
source_rate() {
  local port=$1; shift
  local start end
  start=$(date +%s.%N)
  timeout "$TIMEOUT" "$smtp_source" "$@" -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" \
    -f sender@bench.test -t rcpt@remote.bench "127.0.0.1:$port" >/dev/null
  end=$(date +%s.%N)
  python3 -c "print(f'{$MESSAGES/($end-$start):.0f}')"
}

spooled() { curl -s "http://127.0.0.1:$admin_port/metrics" | awk '$1=="tern_smtp_replies_total{code=\"250\"}"{print $2}'; }

echo "smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE, loopback, $(nproc) cores"
printf '%-28s %10s %10s %8s\n' mode "tern msg/s" "postfix" ratio
for mode in "" "-d"; do
  t=$(source_rate "$tern_port" $mode)
  p=$(source_rate "$pf_port" $mode)
  printf '%-28s %10s %10s %8s\n' "smtp-source ${mode:-(new conn/msg)}" "$t" "$p" \
    "$(python3 -c "print(f'{$t/$p:.2f}x')")"
done

# Every message must really be on the spool: the stream's message count.
msgs=$(curl -s "http://127.0.0.1:$nats_mon/jsz?streams=true" | python3 -c '
import json,sys
try:
    d=json.load(sys.stdin); print(sum(s["state"]["messages"] for a in d.get("account_details",[]) for s in a.get("stream_detail",[]) if s["name"]=="TERN_SPOOL"))
except Exception: print("?")')
echo "TERN_SPOOL messages after both runs: $msgs (expected $((2 * MESSAGES)))"

# Idle connections: RSS per connection.
rss() { awk '/VmRSS/{print $2}' "/proc/$tern_pid/status"; }
before=$(rss)
python3 - "$tern_port" "$IDLE" "$tern_pid" "$before" <<'PY'
import asyncio, sys
port, n, pid, before = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
async def one():
    r, w = await asyncio.open_connection("127.0.0.1", port)
    assert (await r.readline()).startswith(b"220 ")
    return w
async def main():
    conns = []
    for i in range(0, n, 250):
        conns += await asyncio.wait_for(asyncio.gather(*(one() for _ in range(min(250, n - i)))), 60)
    await asyncio.sleep(2)
    after = int([l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1])
    print(f"idle connections: {len(conns)}, ingress RSS {before} KiB -> {after} KiB, "
          f"{(after - before) / len(conns):.1f} KiB per connection")
    for w in conns:
        w.close()
asyncio.run(main())
PY
