#!/usr/bin/env bash
# IMAP benchmark: Tern's mailbox (SQLite, and PostgreSQL when installed)
# against Debian's Dovecot, on loopback, same data, same client, one run.
#
#   deploy/bench/mailbox/bench.sh
#
# For each server: APPEND COUNT (default 10,000) generated messages to one
# INBOX (client.py load; not timed), then client.py run with 1 and with 20
# concurrent clients: LOGIN + SELECT, FETCH 1:* (FLAGS ENVELOPE), 100 full
# bodies, SEARCH SUBJECT, SEARCH TEXT, STORE +FLAGS/-FLAGS on 1,000. Prints
# one JSON line per run (wall time per phase, peak RSS of the server's
# process tree) and a table of ratios Tern / Dovecot (below 1 = Tern faster
# or smaller).
#
# Tern runs as the release build of the mailbox's `mailbox_serve` example with a
# file-backed database. Dovecot is a private instance (own config, run and
# mail dirs; Maildir) on another port; /etc/dovecot is not touched.
# Needs root, dovecot-imapd, python3; PostgreSQL (initdb, pg_ctl) optional.
# Knobs: COUNT, CLIENTS ("1 20"), SERVERS ("dovecot sqlite postgres"),
# BUILD=0 (use the built binary), SERVE=path (run that mailbox_serve).
# Dovecot's bench user has a PLAIN password; Tern's has an Argon2id hash
# (19 MiB and a few tens of ms per LOGIN), which shows in login time and RSS.
# Bounded: fixed counts, and every phase has a TIMEOUT (default 1800 s).
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
here=$(cd "$(dirname "$0")" && pwd)
COUNT=${COUNT:-10000}
TIMEOUT=${TIMEOUT:-1800}
CLIENTS=${CLIENTS:-"1 20"}
# Which servers to run (a subset is handy while tuning one of them).
SERVERS=${SERVERS:-"dovecot sqlite postgres"}
want() { case " $SERVERS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
[ "$(id -u)" = 0 ] || { echo "bench.sh: must run as root (Dovecot, PostgreSQL)" >&2; exit 1; }
command -v dovecot >/dev/null || { echo "bench.sh: install dovecot-imapd" >&2; exit 1; }

nats_bin=$("$root/scripts/deps.sh")
# BUILD=0 uses the binary as it is (when another build holds the lock);
# SERVE=path runs another build of mailbox_serve (say, an older one to compare).
[ "${BUILD:-1}" = 0 ] || [ -n "${SERVE:-}" ] || (cd "$root" && cargo build --release -q -p tern-mailbox --example mailbox_serve)
serve=${SERVE:-"$root/target/release/examples/mailbox_serve"}

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "${pgbin:-}" ] && runuser -u postgres -- "$pgbin/pg_ctl" -m immediate -D "$work/pg/data" stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=dovecot.sh
. "$here/dovecot.sh"

client() { timeout "$TIMEOUT" python3 "$here/client.py" "$@"; }

# NATS (the mailbox needs it for jobs and change notifications).
nats_port=$(free_port)
"$nats_bin" -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" >/dev/null 2>&1 &
pids+=($!)
wait_port "$nats_port"

results="$work/results"
: > "$results"

run_tern() {
  local label=$1 db=$2
  local imap_port; imap_port=$(free_port)
  local admin_port; admin_port=$(free_port)
  env TERN_DATA_DIR="$work/tern-$label" TERN_NATS_URL="nats://127.0.0.1:$nats_port" \
    TERN_HOSTNAME=bench.test TERN_LOCAL_DOMAINS=example.com TERN_DATABASE_URL="$db" \
    TERN_IMAP_LISTEN="127.0.0.1:$imap_port" TERN_IMAPS_LISTEN= TERN_POP3_LISTEN= TERN_POP3S_LISTEN= \
    TERN_MAILBOX_GRPC_LISTEN="127.0.0.1:$(free_port)" TERN_MAILBOX_ADMIN_LISTEN="127.0.0.1:$admin_port" \
    "$serve" --add-user bench@example.com:bench >"$work/tern-$label.out" 2>"$work/tern-$label.err" &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 1 300); do grep -q '^ready' "$work/tern-$label.out" 2>/dev/null && break; sleep 0.1; done
  grep -q '^ready' "$work/tern-$label.out" || { cat "$work/tern-$label.err" >&2; exit 1; }
  wait_port "$imap_port"
  echo "loading $COUNT messages into tern-$label" >&2
  client load 127.0.0.1 "$imap_port" bench@example.com bench "$COUNT" 1
  for c in $CLIENTS; do
    local r; r=$(client run 127.0.0.1 "$imap_port" bench@example.com bench "$c" "$pid")
    echo "tern-$label $r" | tee -a "$results"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run_dovecot() {
  local d="$work/dovecot" port; port=$(free_port)
  mkdir -p "$d"
  echo "bench:{PLAIN}bench" > "$d/passwd"
  start_dovecot "$d" "$port" "$d/log"
  local pid=$dovecot_pid
  echo "loading $COUNT messages into dovecot" >&2
  client load 127.0.0.1 "$port" bench bench "$COUNT" 1
  for c in $CLIENTS; do
    local r; r=$(client run 127.0.0.1 "$port" bench bench "$c" "$pid")
    echo "dovecot $r" | tee -a "$results"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

! want dovecot || run_dovecot
! want sqlite || run_tern sqlite "sqlite://$work/tern-sqlite/mailbox.db"

pgbin=""
for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && pgbin=$d; done
if ! want postgres; then
  :
elif [ -n "$pgbin" ]; then
  pg_port=$(free_port)
  mkdir -p "$work/pg"; chown postgres "$work/pg"
  runuser -u postgres -- "$pgbin/initdb" -U tern --auth=trust -E UTF8 -D "$work/pg/data" >/dev/null
  runuser -u postgres -- "$pgbin/pg_ctl" -w -l "$work/pg/log" -D "$work/pg/data" \
    -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $work/pg" start >/dev/null
  run_tern postgres "postgres://tern@127.0.0.1:$pg_port/postgres"
else
  echo "PostgreSQL not installed: skipping the PostgreSQL run" >&2
fi

python3 - "$results" <<'PY'
import json, sys
runs = {}
for line in open(sys.argv[1]):
    label, js = line.split(" ", 1)
    r = json.loads(js)
    runs[(label, r["clients"])] = r
print("\nratios to Dovecot (time: wall seconds; RSS: peak of the process tree)")
print("%-16s %7s %9s %9s %s" % ("server", "clients", "time", "rss", "phases (time ratio)"))
for (label, c), r in sorted(runs.items()):
    if label == "dovecot":
        continue
    d = runs.get(("dovecot", c))
    if not d:
        continue
    ph = " ".join("%s=%.2f" % (k, r["phases_s"][k] / max(d["phases_s"][k], 1e-3)) for k in r["phases_s"])
    print("%-16s %7d %9.2f %9.2f %s" % (label, c, r["wall_s"] / d["wall_s"], r["peak_rss_kib"] / d["peak_rss_kib"], ph))
PY
