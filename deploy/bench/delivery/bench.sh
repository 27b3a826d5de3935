#!/usr/bin/env bash
# Delivery benchmark, end to end on one machine, loopback only, bounded:
#
#   smtp-source -s 20 -m 20000 -l 4096 -> ingress -> queue -> delivery -> smtp-sink
#
# side by side with a private Postfix instance relaying the same load to its
# own smtp-sink in the same run, with 1, 2 and 4 delivery processes.
#
#   deploy/bench/delivery/bench.sh                 # defaults below
#   PROCS="1 2" MESSAGES=5000 deploy/bench/delivery/bench.sh
#
# Throughput (both systems measured the same way): messages / seconds from
# the start of smtp-source until smtp-sink has counted every message.
# Latency (Tern): per message, from its publish on `tern.spool` (ingress
# answers 250 right after that publish is acked) to delivery's publish of the
# result with the sink's 250, both seen by one plain NATS subscriber
# (services/delivery/examples/bench_latency.rs).
# CPU per message of the system under test, which does not depend on what
# else the machine runs: Postfix's master with every process it started
# (live ones, and the exited ones it reaped), and Tern's processes (NATS
# included; smtp-source and smtp-sink in neither), with Tern's split per
# process to show where the time goes. Also the whole machine's busy time
# per message (/proc/stat), which on a shared machine includes other work.
# MX records come from a real DNS server (Debian's unbound) with a local zone.
# Both sides run with their default per-destination concurrency (20).
# DELIVERY_ENV="TERN_DELIVERY_CONCURRENCY=32 ..." adds settings to every
# delivery process (for experiments; the documented figures use none).
# Needs root (Postfix), postfix, unbound, python3, curl; scripts/deps.sh --test
# installs them. Every wait has a limit (TIMEOUT, default 600 s).
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
SESSIONS=${SESSIONS:-20}
MESSAGES=${MESSAGES:-20000}
SIZE=${SIZE:-4096}
PROCS=${PROCS:-"1 2 4"}
TIMEOUT=${TIMEOUT:-600}
DELIVERY_ENV=${DELIVERY_ENV:-}
UNBOUND=${UNBOUND:-/usr/sbin/unbound}
for bin in "$UNBOUND" /usr/sbin/smtp-sink /usr/sbin/smtp-source /usr/sbin/postfix; do
  [ -x "$bin" ] || { echo "needs $bin (scripts/deps.sh --test)" >&2; exit 1; }
done

nats_bin=$("$root/scripts/deps.sh")
(cd "$root" && cargo build --release -q -p tern && cargo build --release -q -p tern-delivery --example bench_latency)
target=${CARGO_TARGET_DIR:-$root/target}
tern="$target/release/tern"
latency="$target/release/examples/bench_latency"

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

# DNS: remote.bench.test MX -> 127.0.0.1, where smtp-sink listens. One
# unbound serves every run (stop_run leaves it).
start_unbound "remote.bench.test. 3600 IN MX 10 mx.bench.test." "mx.bench.test. 3600 IN A 127.0.0.1"

tck=$(getconf CLK_TCK)
# Busy CPU ticks of the whole machine (user, nice, system, irq, softirq).
cpu_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
# CPU seconds a process has used so far.
proc_cpu() { awk -v t="$tck" '{sub(/^.*\) /, ""); printf "%.1f", ($12+$13)/t}' "/proc/$1/stat" 2>/dev/null || echo "?"; }
cpu_per_msg() { # busy ticks before, after -> "N ms CPU/msg"
  python3 -c "print(f'{($2-$1)/$tck*1000/$MESSAGES:.2f} ms CPU/msg')"
}
# CPU seconds of processes and everything they started (live descendants,
# plus the children they reaped: cutime/cstime).
tree_cpu() {
  python3 - "$tck" "$@" <<'PY'
import os, sys
tck = int(sys.argv[1]); roots = {int(p) for p in sys.argv[2:]}
stat = {}
for d in os.listdir("/proc"):
    if d.isdigit():
        try:
            f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stat[int(d)] = (int(f[1]), sum(int(x) for x in f[11:15]))  # ppid; utime stime cutime cstime
seen, todo, total = set(), list(roots), 0
while todo:
    p = todo.pop()
    if p in seen or p not in stat:
        continue
    seen.add(p); total += stat[p][1]
    todo += [c for c, (pp, _) in stat.items() if pp == p]
print(f"{total / tck:.1f}")
PY
}

source_run() { # port -> start time
  local start
  start=$(python3 -c 'import time; print(time.time())')
  timeout "$TIMEOUT" smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" \
    -f sender@origin.bench.test -t rcpt@remote.bench.test "127.0.0.1:$1" >/dev/null
  echo "$start"
}

tern_run() { # number of delivery processes
  local n=$1 dir="$work/tern$1"
  mkdir -p "$dir"
  local sink_port smtp_port r_grpc
  local -a names=() procs=()
  start_nats "$dir"
  names+=(nats); procs+=("$nats_pid")
  sink_port=$(free_port); smtp_port=$(free_port); r_grpc=$(free_port)
  start_sink 127.0.0.1 "$sink_port" "$dir/sink.out"
  local common=(env -i PATH="$PATH" TERN_NATS_URL="nats://127.0.0.1:$nats_port" TERN_DATA_DIR="$dir/data"
    TERN_HOSTNAME=mx.origin.bench.test TERN_LOCAL_DOMAINS=origin.bench.test
    TERN_RESOLVER_GRPC_LISTEN="127.0.0.1:$r_grpc" TERN_DNS_NAMESERVERS="127.0.0.1:$ub_port"
    TERN_REMOTE_SMTP_PORT="$sink_port")
  local admin
  admin=$(free_port)
  "${common[@]}" TERN_RESOLVER_ADMIN_LISTEN="127.0.0.1:$admin" "$tern" resolver >"$dir/resolver.log" 2>&1 &
  pids+=($!); names+=(resolver); procs+=($!); wait_until resolver ready "$admin"
  admin=$(free_port)
  "${common[@]}" TERN_QUEUE_GRPC_LISTEN=127.0.0.1:0 TERN_QUEUE_ADMIN_LISTEN="127.0.0.1:$admin" "$tern" queue >"$dir/queue.log" 2>&1 &
  pids+=($!); names+=(queue); procs+=($!); wait_until queue ready "$admin"
  for i in $(seq 1 "$n"); do
    admin=$(free_port)
    # shellcheck disable=SC2086 # DELIVERY_ENV is a list of NAME=value words
    "${common[@]}" TERN_DELIVERY_GRPC_LISTEN=127.0.0.1:0 TERN_DELIVERY_ADMIN_LISTEN="127.0.0.1:$admin" \
      $DELIVERY_ENV "$tern" delivery >"$dir/delivery$i.log" 2>&1 &
    pids+=($!); names+=("delivery$i"); procs+=($!); wait_until "delivery$i" ready "$admin"
  done
  admin=$(free_port)
  "${common[@]}" TERN_SMTP_LISTEN="127.0.0.1:$smtp_port" TERN_SUBMISSION_LISTEN= TERN_SUBMISSIONS_LISTEN= TERN_API_LISTEN= \
    TERN_INGRESS_GRPC_LISTEN=127.0.0.1:0 TERN_INGRESS_ADMIN_LISTEN="127.0.0.1:$admin" \
    TERN_TRUSTED_NETWORKS=127.0.0.1/32 TERN_MAX_CONNECTIONS_PER_IP=20000 \
    "$tern" ingress >"$dir/ingress.log" 2>&1 &
  pids+=($!); names+=(ingress); procs+=($!); wait_until ingress ready "$admin"
  "$latency" --nats "nats://127.0.0.1:$nats_port" --count "$MESSAGES" --idle 60 >"$dir/latency.out" &
  local lat_pid=$!
  for _ in $(seq 1 100); do grep -q ready "$dir/latency.out" 2>/dev/null && break; sleep 0.05; done
  local start secs busy0 busy1
  busy0=$(cpu_busy)
  start=$(source_run "$smtp_port")
  secs=$(wait_sink "$dir/sink.out" "$MESSAGES" "$start")
  busy1=$(cpu_busy)
  timeout 120 tail --pid=$lat_pid -f /dev/null || true
  local lat
  lat=$(tail -1 "$dir/latency.out")
  printf '%-22s %8s %10s   %s\n' "tern, $n delivery" "$secs" \
    "$(python3 -c "print(f'{$MESSAGES/$secs:.0f}')")" "$lat"
  echo "$MESSAGES/$secs" >"$work/tern$n.rate"
  local i all line
  all=$(tree_cpu "${procs[@]}")
  line="   tern CPU: $all s, $(python3 -c "print(f'{$all*1000/$MESSAGES:.2f}')") ms/msg ="
  for i in "${!procs[@]}"; do line+=" ${names[$i]} $(proc_cpu "${procs[$i]}")"; done
  echo "$line; machine: $(cpu_per_msg "$busy0" "$busy1")"
  stop_run
}

postfix_run() {
  local dir="$work/postfix" pf_port sink_port
  pf_port=$(free_port); sink_port=$(free_port)
  start_sink 127.0.0.1 "$sink_port" "$work/pfsink.out"
  "$root/deploy/bench/ingress/postfix-instance.sh" start "$dir" "$pf_port" "$sink_port"
  wait_until "postfix smtpd" listening 127.0.0.1 "$pf_port"
  local start secs busy0 busy1
  busy0=$(cpu_busy)
  start=$(source_run "$pf_port")
  secs=$(wait_sink "$work/pfsink.out" "$MESSAGES" "$start")
  busy1=$(cpu_busy)
  printf '%-22s %8s %10s\n' "postfix relay" "$secs" "$(python3 -c "print(f'{$MESSAGES/$secs:.0f}')")"
  local master pf
  master=$(head -1 "$dir/queue/pid/master.pid" 2>/dev/null | tr -d ' ')
  pf=$(tree_cpu "$master")
  echo "   postfix CPU: $pf s, $(python3 -c "print(f'{$pf*1000/$MESSAGES:.2f}')") ms/msg; machine: $(cpu_per_msg "$busy0" "$busy1")"
  echo "$MESSAGES/$secs" >"$work/postfix.rate"
  "$root/deploy/bench/ingress/postfix-instance.sh" stop "$dir"
  stop_run
}

echo "smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE -> ... -> smtp-sink; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-22s %8s %10s   %s\n' system seconds "msg/s" "latency spool (250 at ingress) -> sink's 250 (Tern)"
postfix_run
for n in $PROCS; do tern_run "$n"; done
pf=$(python3 -c "print($(cat "$work/postfix.rate"))")
for n in $PROCS; do
  python3 -c "t=$(cat "$work/tern$n.rate"); print(f'ratio tern($n delivery)/postfix: {t/$pf:.2f}x')"
done
