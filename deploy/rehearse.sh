#!/usr/bin/env bash
# A production-topology Tern cluster rehearsed on one machine, as processes on
# loopback:
#   - a 3-node NATS cluster with JetStream (streams with 3 replicas);
#   - PostgreSQL (initdb into a temp dir; as user `postgres` when root);
#   - two replicas of every service (ingress, queue, resolver, delivery,
#     mailbox), each started with exactly the environment the Helm chart
#     renders for its Deployment (helm template helm/tern, read by
#     deploy/chart-env.py), except what Kubernetes would give each pod on its
#     own: listen addresses (each replica gets free loopback ports instead of
#     0.0.0.0:<fixed port>), the gRPC URLs (replica a talks to a, b to b
#     instead of through a ClusterIP Service) and the data directory (a temp
#     dir instead of the emptyDir at /var/lib/tern);
#   - a DNS server for *.remote.test and an SMTP sink as the remote MX.
# It sends mail through both ingress replicas (local and remote recipients),
# SIGKILLs one delivery worker and one NATS node mid-run, then injects one
# bulk batch through the API and SIGKILLs the ingress replica expanding it
# and a queue replica; it brings them all back as Kubernetes would, and
# checks that every accepted message reached every recipient (the sink for
# remote ones, the mailbox for local ones).
# Everything runs on 127.0.0.1 and stops on exit.
#
# Usage: deploy/rehearse.sh [N]   (N messages, default 300; env TERN_BIN,
#        REHEARSAL_TIMEOUT seconds for the whole run, default 420;
#        REHEARSAL_BATCH recipients in the API batch, default 3000;
#        REHEARSAL_KEEP=1 keeps the temp dir with every log)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
N=${1:-300}
TIMEOUT=${REHEARSAL_TIMEOUT:-420}
started=$(date +%s)
tern="${TERN_BIN:-$root/target/debug/tern}"
[ -x "$tern" ] || cargo build -q -p tern --locked
nats_server=$(scripts/deps.sh)
helm=$(scripts/helm-deps.sh)
py="$root/.venv/bin/python"
tools="$py $root/deploy/rehearsal/tools.py"

work=$(mktemp -d /tmp/tern-rehearsal.XXXXXX)
chmod 755 "$work"
pids=()
declare -A pid_of
pg_ctl_cmd=()
pg_data=""

log() { printf '[%4ss] %s\n' "$(( $(date +%s) - started ))" "$*"; }

cleanup() {
  local rc=$?
  set +e
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 50); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  # Supervised processes whose supervisor had to be killed.
  for f in "$work"/*.pid; do [ -e "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null; done
  if [ -n "$pg_data" ]; then "${pg_ctl_cmd[@]}" -m immediate -D "$pg_data" stop >/dev/null 2>&1; fi
  if [ "$rc" != 0 ] && [ -d "$work" ]; then
    echo "--- last log lines (rehearsal failed) ---"
    for f in "$work"/logs/*.log; do echo "== $(basename "$f")"; tail -n 8 "$f"; done
  fi
  if [ -n "${REHEARSAL_KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Start a background process, logging to logs/NAME.log.
spawn() {
  local name=$1; shift
  "$@" >"$work/logs/$name.log" 2>&1 &
  pid_of[$name]=$!
  pids+=($!)
}
# Run a command like a Kubernetes container with restartPolicy Always: when
# it exits (or is killed) it is started again after 2s. NAME.pid holds the
# current process; TERM to the supervisor stops the process and the loop.
supervise() {
  local name=$1; shift
  (
    set +e
    child=""
    trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null; wait; exit 0' TERM
    restarts=0
    while :; do
      "$@" &
      child=$!
      echo "$child" >"$work/$name.pid"
      wait "$child"; rc=$?
      restarts=$((restarts + 1))
      echo "$restarts" >"$work/$name.restarts"
      echo "supervisor: $name exited with status $rc; restart $restarts in 2s"
      sleep 2 &
      wait $!
    done
  ) >>"$work/logs/$name.log" 2>&1 &
  pid_of[$name]=$!
  pids+=($!)
  disown $!
}
mkdir -p "$work/logs"

# Deadline for the whole rehearsal.
(
  sleep "$TIMEOUT" & sp=$!
  trap 'kill $sp 2>/dev/null; exit 0' TERM
  wait $sp && { echo "rehearsal: timed out after ${TIMEOUT}s" >&2; kill -TERM $$; }
) &
watchdog=$!
pids+=($watchdog)

mapfile -t P < <($tools ports 60)
next=0
# take VAR: the next free port into VAR (no subshell, so the counter moves).
take() { printf -v "$1" '%s' "${P[$next]}"; next=$((next + 1)); }

# --- NATS: 3 nodes, JetStream, one cluster --------------------------------
declare -a nats_client nats_cluster nats_http
for i in 1 2 3; do take "nats_client[$i]"; take "nats_cluster[$i]"; take "nats_http[$i]"; done
start_nats() {
  local i=$1
  supervise "nats-$i" "$nats_server" -c "$work/nats-$i.conf"
}
nats_password="rehearsal-$RANDOM$RANDOM"
for i in 1 2 3; do
  routes=""
  for j in 1 2 3; do [ "$j" = "$i" ] || routes="$routes nats://127.0.0.1:${nats_cluster[$j]}"; done
  mkdir -p "$work/nats-$i"
  cat >"$work/nats-$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:${nats_client[$i]}
http: 127.0.0.1:${nats_http[$i]}
# Clients authenticate; the credentials travel in TERN_NATS_URL (in
# production from the Secret externalNats.existingSecret).
authorization {
  user: tern
  password: "$nats_password"
}
jetstream {
  store_dir: "$work/nats-$i"
  max_memory_store: 256MB
  max_file_store: 2GB
}
cluster {
  name: tern-rehearsal
  listen: 127.0.0.1:${nats_cluster[$i]}
  routes: [$(echo $routes | sed 's/ /, /g')]
}
CONF
  start_nats "$i"
done
nats_url="nats://tern:$nats_password@127.0.0.1:${nats_client[1]},nats://tern:$nats_password@127.0.0.1:${nats_client[2]},nats://tern:$nats_password@127.0.0.1:${nats_client[3]}"
for i in 1 2 3; do $tools wait-http "http://127.0.0.1:${nats_http[$i]}/healthz?js-enabled-only=true" 30; done
log "NATS cluster up (user/password auth): ${nats_url//$nats_password/***}"

# --- PostgreSQL --------------------------------------------------------------
pg_bin=""
for d in $(command -v initdb >/dev/null && dirname "$(command -v initdb)") /usr/lib/postgresql/*/bin; do
  [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { pg_bin=$d; break; }
done
[ -n "$pg_bin" ] || { echo "PostgreSQL (initdb, pg_ctl) not found: scripts/deps.sh --test installs it" >&2; exit 1; }
take pg_port
mkdir -p "$work/pg"
run_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres:postgres "$work/pg"
  run_pg=(runuser -u postgres --)
fi
pg_ctl_cmd=("${run_pg[@]}" "$pg_bin/pg_ctl")
"${run_pg[@]}" "$pg_bin/initdb" -U tern --auth=trust -E UTF8 --no-sync -D "$work/pg/data" >"$work/logs/initdb.log" 2>&1
pg_data="$work/pg/data"
"${pg_ctl_cmd[@]}" -w -t 30 -D "$pg_data" -l "$work/pg/log" \
  -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $work/pg -c fsync=off" start >/dev/null
db_url="postgres://tern@127.0.0.1:$pg_port/postgres"
log "PostgreSQL up: $db_url"

# --- the remote world: DNS and an SMTP sink -----------------------------------
take dns_port; take sink_port
spawn dns $tools dns "$dns_port"
spawn sink $tools sink "$sink_port" "$work/sink.log" 0.02
touch "$work/sink.log"
log "DNS on 127.0.0.1:$dns_port (*.remote.test MX → mx.sink.test = 127.0.0.1), SMTP sink on :$sink_port"

# --- render the chart ----------------------------------------------------------
chart="$work/chart"
cp -r helm/tern "$chart"
"$py" - "$chart/Chart.yaml" <<'PY'
import sys
p = sys.argv[1]; s = open(p).read()
open(p, "w").write(s[: s.index("dependencies:")] if "dependencies:" in s else s)
PY
cat >"$work/values.yaml" <<VALUES
nats:
  enabled: false
externalNats:
  url: "$nats_url"
streamReplicas: 3
database:
  existingSecret: ""
  url: "$db_url"
shutdownGraceSeconds: 10
config:
  hostname: mx.rehearsal.test
  local_domains: [example.com]
  trusted_networks: [127.0.0.0/8]
  dns_nameservers: ["127.0.0.1:$dns_port"]
  remote_smtp_port: $sink_port
  log_format: text
  # Retries within the rehearsal's time (production: minutes to hours).
  queue_retry_schedule: [5s, 10s, 20s]
  # The rehearsal reads the mailbox with cleartext IMAP on loopback (the
  # chart's default is false).
  allow_plaintext_auth: loopback
VALUES
"$helm" template tern "$chart" -f "$work/values.yaml" >"$work/rendered.yaml"
log "chart rendered ($(grep -c '^kind: Deployment' "$work/rendered.yaml") Deployments)"

# --- two replicas of every service ---------------------------------------------
declare -A grpc admin extra
listen_keys() {
  case $1 in
    ingress) echo "SMTP SUBMISSION SUBMISSIONS API" ;;
    mailbox) echo "IMAP IMAPS POP3 POP3S" ;;
    *) echo "" ;;
  esac
}
for c in resolver mailbox queue delivery ingress; do
  for r in a b; do
    take "grpc[$c-$r]"; take "admin[$c-$r]"
    for k in $(listen_keys "$c"); do take "extra[$c-$r-$k]"; done
  done
done

# The chart's environment for component $1, replica $2, with the per-pod overrides.
replica_env() {
  local c=$1 r=$2 up
  up=$(echo "$c" | tr a-z A-Z)
  "$py" deploy/chart-env.py "$work/rendered.yaml" --shell "$c"
  echo "TERN_${up}_GRPC_LISTEN=127.0.0.1:${grpc[$c-$r]}"
  echo "TERN_${up}_ADMIN_LISTEN=127.0.0.1:${admin[$c-$r]}"
  for k in $(listen_keys "$c"); do echo "TERN_${k}_LISTEN=127.0.0.1:${extra[$c-$r-$k]}"; done
  echo "TERN_MAILBOX_URL=http://127.0.0.1:${grpc[mailbox-$r]}"
  echo "TERN_RESOLVER_URL=http://127.0.0.1:${grpc[resolver-$r]}"
  echo "TERN_QUEUE_URL=http://127.0.0.1:${grpc[queue-$r]}"
  echo "TERN_DATA_DIR=$work/data/$c-$r"
}
start_service() {
  local c=$1 r=$2
  mkdir -p "$work/data/$c-$r"
  replica_env "$c" "$r" >"$work/$c-$r.env"
  supervise "$c-$r" env -i PATH=/usr/bin:/bin HOME="$work" bash -c "set -a; . '$work/$c-$r.env'; exec '$tern' $c"
}
for c in resolver mailbox queue delivery ingress; do
  for r in a b; do
    start_service "$c" "$r"
    # The first mailbox migrates the database before the second starts.
    [ "$c" = mailbox ] && [ "$r" = a ] && $tools wait-http "http://127.0.0.1:${admin[mailbox-a]}/readyz" 60
  done
  for r in a b; do $tools wait-http "http://127.0.0.1:${admin[$c-$r]}/readyz" 60; done
  log "$c: 2 replicas ready (gRPC :${grpc[$c-a]} :${grpc[$c-b]}, admin :${admin[$c-a]} :${admin[$c-b]})"
done

# Every stream has 3 replicas.
"$py" - "http://127.0.0.1:${nats_http[1]}/jsz?streams=true&config=true" <<'PY'
import json, sys, urllib.request
d = json.load(urllib.request.urlopen(sys.argv[1]))
streams = [s for a in d.get("account_details", []) for s in a.get("stream_detail", [])]
got = {s["name"]: s["config"].get("num_replicas") for s in streams}
print("streams and replicas:", ", ".join(f"{k}=R{v}" for k, v in sorted(got.items())))
bad = {k: v for k, v in got.items() if k.startswith("TERN_") and v != 3}
sys.exit(f"streams without 3 replicas: {bad}" if bad or not got else 0)
PY

# A local user, through the mailbox gRPC API.
tern_cli() { env -i PATH=/usr/bin:/bin bash -c "set -a; . '$work/mailbox-a.env'; exec '$tern' $*"; }
echo 'rehearsal-pw' | tern_cli user add alice@example.com >/dev/null
log "user alice@example.com added"

# --- the mail ------------------------------------------------------------------
# Message i goes to 1–2 recipients: alice (local) every 3rd, a remote domain
# otherwise, both every 5th.
"$py" - "$N" >"$work/plan.jsonl" <<'PY'
import json, sys
for i in range(int(sys.argv[1])):
    rcpts = []
    if i % 3 == 0 or i % 5 == 0:
        rcpts.append("alice@example.com")
    if i % 3 != 0 or i % 5 == 0:
        rcpts.append(f"user{i % 11}@d{i % 7}.remote.test")
    print(json.dumps({"id": f"m{i:05d}", "rcpts": rcpts}))
PY
spawn sender $tools send "$work/plan.jsonl" "127.0.0.1:${extra[ingress-a-SMTP]}" "127.0.0.1:${extra[ingress-b-SMTP]}"
sender=${pid_of[sender]}
accepted() { grep -cE '^m[0-9]+$' "$work/logs/sender.log" || true; }
log "sending $N messages through both ingress replicas"

# Mid-run: SIGKILL a delivery worker and the NATS node that leads TERN_JOBS.
while [ "$(accepted)" -lt $((N / 3)) ]; do
  kill -0 "$sender" 2>/dev/null || break
  sleep 0.2
done
victim=$("$py" - "http://127.0.0.1:${nats_http[1]}/jsz?streams=true&config=true" <<'PY' || echo n2
import json, sys, urllib.request
d = json.load(urllib.request.urlopen(sys.argv[1]))
for a in d.get("account_details", []):
    for s in a.get("stream_detail", []):
        if s["name"] == "TERN_JOBS":
            print(s.get("cluster", {}).get("leader") or "n2"); sys.exit()
print("n2")
PY
)
vi=${victim#n}
log "$(accepted)/$N accepted; delivered so far: $(wc -l <"$work/sink.log") at the sink"
dpid=$(cat "$work/delivery-a.pid"); npid=$(cat "$work/nats-$vi.pid")
log "SIGKILL delivery-a (pid $dpid) and NATS node $victim (TERN_JOBS leader, pid $npid); their supervisors restart them 2s later, as Kubernetes would"
kill -KILL "$dpid" "$npid"

wait "$sender" || true
ok=$(accepted)
gave_up=$(grep -c 'gave up' "$work/logs/sender.log" || true)
retries=$(grep -c 'retrying' "$work/logs/sender.log" || true)
log "sender done: $ok/$N accepted with 250 ($retries retried after 4xx or a lost connection, $gave_up given up)"
[ "$ok" = "$N" ] || { echo "not every message was accepted" >&2; exit 1; }

# --- a bulk batch through the injection API, with its expander killed ------------
# B recipients in one POST to ingress-a; as soon as its expansion has begun,
# SIGKILL the ingress replica expanding it (it logged "expanding batch") and
# queue-a. The batch's spec stays in TERN_INJECT until fully spooled, so a
# surviving or restarted replica resumes it from the saved cursor after the
# 30 s ack wait. Delivery is at least once: messages published after the last
# saved cursor may be published again (JetStream's duplicate window drops
# most) and are counted below as duplicate deliveries.
B=${REHEARSAL_BATCH:-3000}
tern_cli tenant add shop --domain shop.example >/dev/null
api_key=$(tern_cli apikey create --tenant shop | tail -n1)
api_a="http://127.0.0.1:${extra[ingress-a-API]}"; api_b="http://127.0.0.1:${extra[ingress-b-API]}"
batch_id=$($tools inject "$api_a" "$api_key" "$B" "$work/plan.jsonl")
# The "expanding batch" log lines of this batch, with their replica's log file.
expansions() { grep -H "expanding batch.*$batch_id\|$batch_id.*expanding batch" "$work"/logs/ingress-*.log; }
expander=$(expansions | head -n1 | cut -d: -f1 || true)
[ -n "$expander" ] || { echo "no ingress replica logged the expansion of $batch_id" >&2; exit 1; }
expander=$(basename "$expander" .log)
ipid=$(cat "$work/$expander.pid"); qpid=$(cat "$work/queue-a.pid")
kill -KILL "$ipid" "$qpid"
survivor=$api_b; [ "$expander" = ingress-b ] && survivor=$api_a
log "batch $batch_id of $B recipients accepted (202); SIGKILL $expander (pid $ipid, expanding it) and queue-a (pid $qpid); the batch then: $($tools batch "$survivor" "$api_key" "$batch_id" 2>/dev/null || echo '?') (state, spooled, total)"

# --- accounting ------------------------------------------------------------------
check() {
  $tools imap-ids "127.0.0.1:${extra[mailbox-b-IMAP]}" alice@example.com rehearsal-pw >"$work/mailbox.ids" 2>/dev/null || : >"$work/mailbox.ids"
  "$py" - "$work/plan.jsonl" "$work/sink.log" "$work/mailbox.ids" "$1" <<'PY'
import collections, json, sys
plan = [json.loads(l) for l in open(sys.argv[1])]
sink = collections.Counter(tuple(l.split()) for l in open(sys.argv[2]) if l.strip())
mailbox = set(open(sys.argv[3]).read().split())
want_remote = {(m["id"], r) for m in plan for r in m["rcpts"] if not r.endswith("@example.com")}
want_local = {m["id"] for m in plan if "alice@example.com" in m["rcpts"]}
missing_remote = want_remote - set(sink)
missing_local = want_local - mailbox
dups = sum(n - 1 for n in sink.values() if n > 1)
final = sys.argv[4] == "final"
if True:
    print(f"messages {len(plan)}: remote recipients {len(want_remote)}, delivered to the sink "
          f"{len(want_remote) - len(missing_remote)} (+{dups} duplicate deliveries); "
          f"local recipients {len(want_local)}, stored in the mailbox {len(want_local) - len(missing_local)}")
    if missing_remote or missing_local:
        print(f"MISSING remote: {sorted(missing_remote)[:20]}")
        print(f"MISSING local: {sorted(missing_local)[:20]}")
sys.exit(1 if (missing_remote or missing_local) else 0)
PY
}
log "waiting until every recipient has its message (a job the killed worker held comes back after its 60s ack wait)"
last=""
until check progress >"$work/check.out"; do
  now=$(head -n1 "$work/check.out")
  [ "$now" = "$last" ] || log "  $now"
  last=$now
  if [ $(( $(date +%s) - started )) -gt $((TIMEOUT - 20)) ]; then
    check final || true
    echo "rehearsal: FAILED, not every message accounted for" >&2
    exit 1
  fi
  sleep 2
done
cat "$work/check.out"
for f in "$work"/*.restarts; do
  [ -e "$f" ] || continue
  n=$(basename "$f" .restarts)
  case $n in
    delivery-a|"nats-$vi"|"$expander"|queue-a) echo "  restarts: $n $(cat "$f") (the SIGKILL)" ;;
    *) echo "  restarts: $n $(cat "$f") (UNEXPECTED: it exited by itself; see its log)" ;;
  esac
done
# Who expanded the batch, from which cursor (the second line is the resume).
expansions |
  sed -E 's|^.*/(ingress-[ab])\.log:.*(from[^ ,]*).*|  batch: \1 expanded it \2|' || true
env -i PATH=/usr/bin:/bin bash -c "set -a; . '$work/queue-a.env'; exec '$tern' queue stats" 2>/dev/null | sed 's/^/  queue stats: /' || true
log "rehearsal passed: every message accounted for"
kill "$watchdog" 2>/dev/null || true
