#!/usr/bin/env bash
# Bulk-sending benchmark (issue 16): the injection API against SMTP, side
# by side with Postfix in one run, on one machine, loopback only, bounded.
#
#   API:      RECIPIENTS recipients in batches of BATCH (THREADS POSTs at
#             once, a templated ~SIZE-octet message each) -> `tern up` -> smtp-sink
#   Tern SMTP: smtp-source -s SESSIONS -m RECIPIENTS -l SIZE -> `tern up` -> smtp-sink
#   Postfix:  the same smtp-source load -> Postfix relaying -> smtp-sink
#
#   deploy/bench/inject/bench.sh                       # 100,000 recipients
#   RECIPIENTS=20000 deploy/bench/inject/bench.sh
#
# Accepted/s: recipients / seconds until the last POST got its 202 (or
# smtp-source its last 250); both promise the mail is on disk. Delivered/s:
# recipients / seconds from the first request until smtp-sink counted the
# last message. Peak RSS: the largest resident size of the `tern up`
# process (all five services) and of its nats-server, sampled every 0.5 s.
# Needs root (Postfix), postfix, unbound, python3, curl; scripts/deps.sh
# --test installs them. Every wait has a limit (TIMEOUT, default 900 s).
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
RECIPIENTS=${RECIPIENTS:-100000}
BATCH=${BATCH:-1000}
THREADS=${THREADS:-4}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-4096}
TIMEOUT=${TIMEOUT:-900}
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

domain=remote.bench.test
start_unbound "$domain. 3600 IN MX 10 mx.bench.test." "mx.bench.test. 3600 IN A 127.0.0.1"

# Sample the peak RSS (MiB) of PIDs into FILE until the sampler is killed.
sample_rss() { # file, pid...
  local out=$1 p peak=() i
  shift
  for p in "$@"; do peak+=(0); done
  while :; do
    i=0
    for p in "$@"; do
      r=$(rss_mib "$p" 2>/dev/null || echo 0)
      [ "${r:-0}" -gt "${peak[$i]}" ] && peak[i]=$r
      i=$((i + 1))
    done
    echo "${peak[*]}" >"$out"
    sleep 0.5
  done
}
report() { # name, accept seconds, delivered seconds, peak RSS text
  printf '%-12s %9s %10s %9s %11s  %s\n' "$1" "$2" "$(rate "$RECIPIENTS" "$2")" "$3" "$(rate "$RECIPIENTS" "$3")" "$4"
}

postfix_run() {
  local dir="$work/postfix" pf_port sink_port start acc e2e
  pf_port=$(free_port); sink_port=$(free_port)
  start_sink 127.0.0.1 "$sink_port" "$work/pfsink.out"
  "$root/deploy/bench/ingress/postfix-instance.sh" start "$dir" "$pf_port" "$sink_port"
  wait_until "postfix smtpd" listening 127.0.0.1 "$pf_port"
  start=$(now)
  timeout "$TIMEOUT" smtp-source -s "$SESSIONS" -m "$RECIPIENTS" -l "$SIZE" \
    -f sender@origin.bench.test -t "rcpt@$domain" "127.0.0.1:$pf_port" >/dev/null
  acc=$(secs_since "$start")
  e2e=$(wait_sink "$work/pfsink.out" "$RECIPIENTS" "$start")
  report postfix "$acc" "$e2e" ""
  echo "$e2e" >"$work/postfix.e2e"
  "$root/deploy/bench/ingress/postfix-instance.sh" stop "$dir"
  stop_run
}

# One `tern up` run; MODE is smtp (smtp-source) or api (client.py).
tern_run() { # mode
  local mode=$1 dir="$work/tern-$1" sink_port start acc e2e sampler key nats
  sink_port=$(free_port)
  start_sink 127.0.0.1 "$sink_port" "$dir.sink"
  start_up "$dir" "$sink_port"
  nats=$(pgrep -P "$up_pid" nats-server | head -1)
  sample_rss "$dir.rss" "$up_pid" "$nats" &
  sampler=$!
  if [ "$mode" = api ]; then
    env TERN_NATS_URL="$up_nats" "$tern" tenant add shop --domain shop.bench.test >/dev/null
    key=$(env TERN_NATS_URL="$up_nats" "$tern" apikey create --tenant shop | tail -1)
    start=$(now)
    accepted=$(timeout "$TIMEOUT" python3 "$root/deploy/bench/inject/client.py" \
      "http://127.0.0.1:$api_port/v1/messages" "$key" "$RECIPIENTS" "$BATCH" "$THREADS" "$SIZE" "$domain")
    [ "$accepted" = "$RECIPIENTS" ] || { echo "the API accepted $accepted of $RECIPIENTS" >&2; exit 1; }
  else
    start=$(now)
    timeout "$TIMEOUT" smtp-source -s "$SESSIONS" -m "$RECIPIENTS" -l "$SIZE" \
      -f sender@origin.bench.test -t "rcpt@$domain" "127.0.0.1:$smtp_port" >/dev/null
  fi
  acc=$(secs_since "$start")
  e2e=$(wait_sink "$dir.sink" "$RECIPIENTS" "$start")
  kill "$sampler"; wait "$sampler" 2>/dev/null || true
  read -r up_rss nats_rss <"$dir.rss"
  report "tern $mode" "$acc" "$e2e" "tern up ${up_rss} MiB, nats-server ${nats_rss} MiB"
  echo "$e2e" >"$work/$mode.e2e"
  stop_run
}

echo "$RECIPIENTS recipients, ~$SIZE octets each; API batches of $BATCH ($THREADS at once), smtp-source -s $SESSIONS"
echo "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-12s %9s %10s %9s %11s  %s\n' system "accept s" "accepted/s" "deliver s" "delivered/s" "peak RSS"
postfix_run
tern_run smtp
tern_run api
pf=$(cat "$work/postfix.e2e")
for mode in api smtp; do
  python3 -c "print(f'tern $mode / postfix, delivered per second: {$pf / $(cat "$work/$mode.e2e"):.2f}x')"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
