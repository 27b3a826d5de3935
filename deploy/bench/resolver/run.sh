#!/usr/bin/env bash
# Resolver benchmark, loopback only and bounded: starts Debian's unbound on a
# free 127.0.0.1 port with a generated local zone (one cached domain, COLD
# domains each with its own MX host), then runs the resolver_bench example
# (release build), which starts the resolver in-process and measures cached
# ResolveRoute from CALLERS gRPC callers and cold ResolveRoute against unbound.
# The callers share CONNECTIONS HTTP/2 connections (tonic channels), as the
# delivery workers of a few pods would; CONNECTIONS=$CALLERS gives every
# caller its own.
#
#   deploy/bench/resolver/run.sh            # defaults below
#   CALLERS=50 CONNECTIONS=4 REQUESTS=300000 COLD=20000 SECONDS_MAX=20 deploy/bench/resolver/run.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
CALLERS=${CALLERS:-50}
CONNECTIONS=${CONNECTIONS:-4}
REQUESTS=${REQUESTS:-300000}
COLD=${COLD:-20000}
SECONDS_MAX=${SECONDS_MAX:-20}
UNBOUND=${UNBOUND:-/usr/sbin/unbound}
[ -x "$UNBOUND" ] || { echo "needs $UNBOUND (Debian package unbound; scripts/deps.sh --test installs it)" >&2; exit 1; }

cd "$root"
# NO_BUILD=1 runs the already built binary (e.g. while another build holds the lock).
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p tern-resolver --example resolver_bench

dir=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
{
  cat <<CONF
server:
  interface: 127.0.0.1
  port: $port
  do-ip6: no
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "$dir"
  pidfile: "$dir/unbound.pid"
  use-syslog: no
  logfile: "$dir/unbound.log"
  verbosity: 0
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  do-not-query-localhost: yes
  num-threads: 1
  local-zone: "bench.test." static
  local-data: "bench.test. 3600 IN SOA ns.bench.test. hostmaster.bench.test. 1 3600 600 86400 3600"
  local-data: "cached.bench.test. 3600 IN MX 10 mx1.bench.test."
  local-data: "cached.bench.test. 3600 IN MX 10 mx2.bench.test."
  local-data: "mx1.bench.test. 3600 IN A 192.0.2.1"
  local-data: "mx2.bench.test. 3600 IN A 192.0.2.2"
CONF
  for ((i = 0; i < COLD; i++)); do
    echo "  local-data: \"d$i.bench.test. 3600 IN MX 10 mx.d$i.bench.test.\""
    echo "  local-data: \"mx.d$i.bench.test. 3600 IN A 192.0.2.$((i % 250 + 1))\""
  done
  cat <<CONF
remote-control:
  control-enable: yes
  control-interface: 127.0.0.1
  control-port: $cport
  control-use-cert: no
CONF
} > "$dir/unbound.conf"

"$UNBOUND" -d -c "$dir/unbound.conf" &
pid=$!
for _ in $(seq 1 200); do
  /usr/sbin/unbound-control -c "$dir/unbound.conf" status >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$dir/unbound.log" >&2; exit 1; }
  sleep 0.05
done
/usr/sbin/unbound-control -c "$dir/unbound.conf" status >/dev/null

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(uname -sr); unbound $("$UNBOUND" -V | head -1 | awk '{print $2}') on 127.0.0.1:$port"
timeout 300 "$root/target/release/examples/resolver_bench" \
  --nameserver "127.0.0.1:$port" --callers "$CALLERS" --connections "$CONNECTIONS" --requests "$REQUESTS" \
  --cold "$COLD" --seconds "$SECONDS_MAX"
