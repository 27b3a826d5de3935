# Shell helpers shared by the benchmarks (sourced, not run). Loopback only;
# every wait is bounded by TIMEOUT seconds. Expects `root`, `work` (a temp
# dir) and the array `pids` (the processes of the current run) to be set,
# and `nats_bin` before start_nats or start_tern.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { python3 -c 'import time; print(time.time())'; }
since() { python3 -c "import time; print(f'{time.time()-$1:.1f}')"; }
rate() { python3 -c "print(f'{$1/$2:.0f}')"; }
rss_mib() { awk '/VmRSS/{printf "%.0f", $2/1024}' "/proc/$1/status"; }
# Run `check...` every 0.2 s until it succeeds, at most TIMEOUT seconds.
wait_until() {
  local what=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@"; do
    [ $SECONDS -lt $deadline ] || { echo "timeout waiting for $what" >&2; return 1; }
    sleep 0.2
  done
}
listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; } # host, port
ready() { curl -sf "http://127.0.0.1:$1/readyz" >/dev/null; }
# smtp-sink -c prints a running count; the last number is the total so far.
sink_count() { tr '\r' '\n' <"$1" | grep -Eo '[0-9]+' | tail -1 || echo 0; }
sink_has() { [ "$(sink_count "$1")" -ge "$2" ]; }
secs_since() { python3 -c "import time; print(f'{time.time()-$1:.2f}')"; }
# Wait until smtp-sink counted COUNT messages; prints the seconds since START.
wait_sink() { # file, count, start time -> seconds
  local deadline=$((SECONDS + TIMEOUT))
  while [ "$(sink_count "$1")" -lt "$2" ]; do
    [ $SECONDS -lt $deadline ] || { echo "timeout: $(sink_count "$1") of $2 arrived" >&2; return 1; }
    sleep 0.05
  done
  secs_since "$3"
}
sink_user=()
[ "$(id -u)" = 0 ] && sink_user=(-u nobody)
# Start Postfix's smtp-sink; sets sink_pid.
start_sink() { # host (127.0.0.1 or ::1), port, output file, extra smtp-sink options...
  local host=$1 port=$2 out=$3 addr
  shift 3
  addr="$host:$port"
  [ "$host" = "::1" ] && addr="[::1]:$port"
  smtp-sink "${sink_user[@]}" "$@" -c "$addr" 1000 >"$out" 2>"$out.err" &
  sink_pid=$!
  pids+=("$sink_pid")
  wait_until "smtp-sink on $addr" listening "$host" "$port"
}
# smtp-source: COUNT messages of SIZE bytes over SESSIONS sessions to rcpt@DOMAIN.
send() { # port, recipient domain
  timeout "$TIMEOUT" smtp-source -s "$SESSIONS" -m "$COUNT" -l "$SIZE" \
    -f sender@origin.bench.test -t "rcpt@$2" "127.0.0.1:$1" >/dev/null
}
# Debian's unbound on loopback serving `bench.test` with the given
# local-data records; sets ub_port and unbound_pid. It outlives stop_run
# (several runs can share it); stop_all stops it.
start_unbound() { # "name TTL IN TYPE data"...
  ub_port=$(free_port)
  {
    cat <<CONF
server:
  interface: 127.0.0.1
  port: $ub_port
  do-ip6: no
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "$work"
  pidfile: "$work/unbound.pid"
  use-syslog: no
  logfile: "$work/unbound.log"
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  do-not-query-localhost: yes
  local-zone: "bench.test." static
  # The DMARC tree walk also asks _dmarc.test: answer NXDOMAIN, do not recurse.
  local-zone: "test." static
  local-data: "bench.test. 3600 IN SOA ns.bench.test. hostmaster.bench.test. 1 3600 600 86400 3600"
CONF
    # Single quotes outside, so TXT data can be double-quoted inside.
    for rr in "$@"; do echo "  local-data: '$rr'"; done
  } >"$work/unbound.conf"
  "${UNBOUND:-/usr/sbin/unbound}" -d -c "$work/unbound.conf" &
  unbound_pid=$!
}
# nats-server with JetStream, file storage in DIR/js, log in DIR/nats.log,
# on a free loopback port; extra nats-server options follow. Sets nats_pid
# and nats_port.
start_nats() { # dir, nats-server options...
  local dir=$1
  shift
  nats_port=$(free_port)
  "$nats_bin" -js -sd "$dir/js" -a 127.0.0.1 -p "$nats_port" "$@" >"$dir/nats.log" 2>&1 &
  nats_pid=$!
  pids+=("$nats_pid")
  wait_until nats-server listening 127.0.0.1 "$nats_port"
}
# Start nats-server and the five Tern services (one of each) in DIR, remote
# MXs on port SINK_PORT, SMTP on 127.0.0.1:SMTP_PORT; extra NAME=value
# settings apply to every service. Sets nats_pid, queue_pid, queue_admin
# (the queue's admin HTTP port) and tern_env
# (the environment for `tern queue ...` commands).
start_tern() { # dir, sink port, smtp port, NAME=value...
  local dir=$1 sink_port=$2 smtp_port=$3 r_grpc q_grpc
  shift 3
  mkdir -p "$dir"
  start_nats "$dir"
  r_grpc=$(free_port); q_grpc=$(free_port)
  tern_env=(env -i PATH="$PATH" TERN_NATS_URL="nats://127.0.0.1:$nats_port" TERN_DATA_DIR="$dir/data"
    TERN_HOSTNAME=mx.origin.bench.test TERN_LOCAL_DOMAINS=origin.bench.test
    TERN_RESOLVER_GRPC_LISTEN="127.0.0.1:$r_grpc" TERN_DNS_NAMESERVERS="127.0.0.1:$ub_port"
    TERN_REMOTE_SMTP_PORT="$sink_port" TERN_QUEUE_GRPC_LISTEN="127.0.0.1:$q_grpc"
    TERN_QUEUE_URL="http://127.0.0.1:$q_grpc" "$@")
  local name admin key
  for name in resolver queue delivery ingress; do
    admin=$(free_port)
    key="TERN_$(echo "$name" | tr '[:lower:]' '[:upper:]')_ADMIN_LISTEN"
    local -a own=()
    case $name in
    delivery) own=(TERN_DELIVERY_GRPC_LISTEN=127.0.0.1:0) ;;
    ingress) own=(TERN_SMTP_LISTEN="127.0.0.1:$smtp_port" TERN_SUBMISSION_LISTEN= TERN_SUBMISSIONS_LISTEN= TERN_API_LISTEN=
      TERN_INGRESS_GRPC_LISTEN=127.0.0.1:0 TERN_TRUSTED_NETWORKS=127.0.0.1/32 TERN_MAX_CONNECTIONS_PER_IP=20000) ;;
    esac
    "${tern_env[@]}" "$key=127.0.0.1:$admin" "${own[@]}" "$tern" "$name" >"$dir/$name.log" 2>&1 &
    pids+=($!)
    if [ "$name" = queue ]; then queue_pid=$!; queue_admin=$admin; fi
    wait_until "$name ready" ready "$admin"
  done
}
# Stop the processes of the current run (`pids`); unbound keeps serving.
stop_run() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
# Stop everything: the current run's processes and unbound.
stop_all() {
  stop_run
  if [ -n "${unbound_pid:-}" ]; then
    kill "$unbound_pid" 2>/dev/null || true
    wait "$unbound_pid" 2>/dev/null || true
    unbound_pid=
  fi
}
# Start `tern up` in DIR relaying to smtp-sink on SINK_PORT; extra
# NAME=value settings follow. Sets up_pid, smtp_port, api_port (the
# injection API) and up_nats (the managed nats-server's URL, for `tern`
# commands such as `tenant add`).
start_up() { # dir, sink port, NAME=value...
  local dir=$1 sink_port=$2 key
  shift 2
  mkdir -p "$dir"
  smtp_port=$(free_port); api_port=$(free_port)
  up_nats="nats://127.0.0.1:$(free_port)"
  local -a env=(env -i PATH="$PATH" TERN_DATA_DIR="$dir/data" TERN_NATS_SERVER="$nats_bin"
    TERN_MANAGED_NATS_LISTEN="${up_nats#nats://}"
    TERN_HOSTNAME=mx.origin.bench.test TERN_LOCAL_DOMAINS=origin.bench.test
    TERN_DNS_NAMESERVERS="127.0.0.1:$ub_port" TERN_REMOTE_SMTP_PORT="$sink_port"
    TERN_TRUSTED_NETWORKS=127.0.0.1/32 TERN_MAX_CONNECTIONS_PER_IP=20000
    TERN_SMTP_LISTEN="127.0.0.1:$smtp_port" TERN_API_LISTEN="127.0.0.1:$api_port")
  for key in SUBMISSION SUBMISSIONS IMAP IMAPS POP3 POP3S INGRESS_GRPC QUEUE_GRPC RESOLVER_GRPC \
    DELIVERY_GRPC MAILBOX_GRPC INGRESS_ADMIN QUEUE_ADMIN RESOLVER_ADMIN DELIVERY_ADMIN MAILBOX_ADMIN; do
    env+=("TERN_${key}_LISTEN=127.0.0.1:$(free_port)")
  done
  "${env[@]}" "$@" "$tern" up >"$dir/up.out" 2>"$dir/up.log" &
  up_pid=$!
  pids+=("$up_pid")
  wait_until "tern up" grep -qsx "tern is up" "$dir/up.out"
}
