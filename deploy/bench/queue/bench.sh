#!/usr/bin/env bash
# Queue benchmark, one machine, loopback only, bounded (every wait has a
# limit, TIMEOUT seconds). Three figures, with COUNT messages (default
# 100,000) of SIZE bytes sent by Postfix's smtp-source over SESSIONS sessions:
#
# 1. Deferred backlog. The sink answers every RCPT with a 4xx, so every
#    message is attempted once and deferred: its retry becomes a JetStream
#    message schedule (retry schedule 1d, so none fires during the run).
#    Reported: jobs scheduled per second (smtp-source start until
#    `tern queue stats` counts COUNT scheduled jobs), and the RSS of the
#    queue process (and of nats-server, which now holds the backlog) with
#    COUNT deferred jobs waiting.
# 2. Held backlog drain. The destination is held (`tern queue hold`), COUNT
#    messages are queued, then `tern queue release`; reported: seconds from
#    the release until smtp-sink has counted every message.
# 3. The same drain with Postfix: a private instance relaying to its own
#    smtp-sink, its SMTP client transport suspended (`defer_transports =
#    smtp`, Postfix's way to hold a destination) until COUNT messages wait
#    in its deferred queue, then resumed and flushed (`postqueue -f`);
#    seconds until its sink has every message.
#
#   deploy/bench/queue/bench.sh
#   COUNT=20000 deploy/bench/queue/bench.sh
#   PARTS=postfix COUNT=2000 deploy/bench/queue/bench.sh   # one side only
#
# Needs root (Postfix), postfix, unbound, python3, curl (scripts/deps.sh --test).
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
COUNT=${COUNT:-100000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-4096}
TIMEOUT=${TIMEOUT:-900}
PARTS=${PARTS:-"tern postfix"}
UNBOUND=${UNBOUND:-/usr/sbin/unbound}
for bin in "$UNBOUND" /usr/sbin/smtp-sink /usr/sbin/smtp-source /usr/sbin/postfix /usr/sbin/postsuper; do
  [ -x "$bin" ] || { echo "needs $bin (scripts/deps.sh --test)" >&2; exit 1; }
done
nats_bin=$("$root/scripts/deps.sh")
[ "${BUILD:-1}" = 0 ] || (cd "$root" && cargo build --release -q -p tern)
tern="${CARGO_TARGET_DIR:-$root/target}/release/tern"

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

# DNS: both test domains' MX -> 127.0.0.1, where smtp-sink listens.
start_unbound "deferred.bench.test. 3600 IN MX 10 mx.bench.test." \
  "held.bench.test. 3600 IN MX 10 mx.bench.test." "mx.bench.test. 3600 IN A 127.0.0.1"

echo "queue benchmark: $COUNT messages of $SIZE bytes, $SESSIONS sessions; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

tern_part() {
  sink_port=$(free_port); smtp_port=$(free_port)
  start_sink 127.0.0.1 "$sink_port" "$work/sink-deferring.out" -r RCPT
  start_tern "$work/tern" "$sink_port" "$smtp_port" TERN_QUEUE_RETRY_SCHEDULE=1d
  admin() { "${tern_env[@]}" "$tern" queue "$@"; }
  # A destination's count in `tern queue stats` (columns: 2 ready, 3 scheduled, 4 held).
  stat_of() { admin stats | awk -v d="$1" -v c="$2" '$1 == d {print $c}'; }
  stat_at_least() { [ "$(stat_of "$1" "$2")" -ge "$3" ] 2>/dev/null; }

  # 1. Deferred backlog.
  queue_rss0=$(rss_mib "$queue_pid")
  start=$(now)
  send "$smtp_port" deferred.bench.test
  wait_until "$COUNT scheduled" stat_at_least deferred.bench.test 3 "$COUNT"
  secs=$(since "$start")
  printf '%-44s %8s s %8s jobs/s\n' "tern: $COUNT deferred and scheduled" "$secs" "$(rate "$COUNT" "$secs")"
  stats_start=$(now)
  admin stats >/dev/null
  printf '%-44s %8s s\n' "tern: queue stats with that backlog" "$(since "$stats_start")"
  printf '%-44s queue %s MiB (%s MiB before), nats-server %s MiB\n' "tern: RSS with $COUNT deferred jobs" \
    "$(rss_mib "$queue_pid")" "$queue_rss0" "$(rss_mib "$nats_pid")"

  # 2. Held backlog drain, with a sink that accepts.
  kill "$sink_pid"; wait "$sink_pid" 2>/dev/null || true
  start_sink 127.0.0.1 "$sink_port" "$work/sink.out"
  admin hold held.bench.test >/dev/null
  held_visible() { admin stats | grep -q '^held.bench.test .*on hold'; }
  wait_until "the hold in stats" held_visible
  send "$smtp_port" held.bench.test
  wait_until "$COUNT held" stat_at_least held.bench.test 4 "$COUNT"
  start=$(now)
  admin release held.bench.test >/dev/null
  release_secs=$(since "$start")
  wait_until "$COUNT at the sink" sink_has "$work/sink.out" "$COUNT"
  secs=$(since "$start")
  printf '%-44s %8s s %8s msg/s   (release call %s s)\n' "tern: held backlog drained after release" "$secs" "$(rate "$COUNT" "$secs")" "$release_secs"
  echo "$secs" >"$work/tern.drain"
  stop_all
}

postfix_part() {
  pf_dir="$work/postfix"
  pf_port=$(free_port); pf_sink=$(free_port)
  start_sink 127.0.0.1 "$pf_sink" "$work/pfsink.out"
  "$root/deploy/bench/ingress/postfix-instance.sh" start "$pf_dir" "$pf_port" "$pf_sink"
  # Hold: the SMTP client transport does not deliver until flushed.
  postconf -c "$pf_dir" -e 'defer_transports = smtp'
  postfix -c "$pf_dir" reload >/dev/null 2>&1
  wait_until "postfix smtpd" listening 127.0.0.1 "$pf_port"
  deferred_count() { find "$pf_dir/queue/deferred" -type f | wc -l; }
  pf_held() { [ "$(deferred_count)" -ge "$COUNT" ]; }
  send "$pf_port" held.bench.test
  wait_until "$COUNT in Postfix's deferred queue" pf_held
  start=$(now)
  postconf -c "$pf_dir" -e 'defer_transports ='
  postfix -c "$pf_dir" reload >/dev/null 2>&1
  postqueue -c "$pf_dir" -f
  wait_until "$COUNT at Postfix's sink" sink_has "$work/pfsink.out" "$COUNT"
  secs=$(since "$start")
  printf '%-44s %8s s %8s msg/s\n' "postfix: held backlog drained after release" "$secs" "$(rate "$COUNT" "$secs")"
  echo "$secs" >"$work/postfix.drain"
}

for part in $PARTS; do "${part}_part"; done
if [ -f "$work/tern.drain" ] && [ -f "$work/postfix.drain" ]; then
  python3 -c "t=$(cat "$work/tern.drain"); p=$(cat "$work/postfix.drain"); print(f'drain time ratio postfix/tern: {p/t:.2f}x (above 1: Tern drains faster)')"
fi
