#!/usr/bin/env bash
# IMAP compliance: Dovecot's imaptest against Tern's mailbox (SQLite, and
# PostgreSQL when installed) and against Debian's Dovecot, on loopback, one
# run, side by side.
#
#   deploy/compliance/imaptest.sh IMAPTEST_BIN [TESTS_DIR]
#
# IMAPTEST_BIN is a built imaptest (it is not packaged for Debian; build it
# from its source against Debian's dovecot-dev). TESTS_DIR is its scripted
# suite (`src/tests` of its source), by default the one beside the binary
# (`$(dirname IMAPTEST_BIN)/src/src/tests`). For each server: the scripted
# suite (`test=TESTS_DIR`), then the stress mode (`clients=10 secs=30`,
# `mbox=` 50 messages of the suite's own mboxes) with a fresh user. Prints
# one table: groups failed, base-protocol and extension commands failed,
# and the stress run's errors (lines imaptest reports as `Error:` or
# protocol violations). Logs are kept in the printed directory.
#
# Not a CI step (CI cannot build imaptest). Needs root (Dovecot, PostgreSQL),
# dovecot-imapd, python3; PostgreSQL (initdb, pg_ctl) optional. Knobs:
# SERVERS ("dovecot sqlite postgres"), BUILD=0 (use the built mailbox_serve),
# SERVE=path, SECS (30), CLIENTS (10). Every run is bounded by TIMEOUT (600 s).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 IMAPTEST_BIN [TESTS_DIR]" >&2; exit 2; }
imaptest=$1
tests=${2:-"$(dirname "$imaptest")/src/src/tests"}
[ -x "$imaptest" ] || { echo "imaptest.sh: $imaptest is not executable" >&2; exit 2; }
[ -d "$tests" ] || { echo "imaptest.sh: no scripted tests in $tests (pass TESTS_DIR)" >&2; exit 2; }
root=$(cd "$(dirname "$0")/../.." && pwd)
SERVERS=${SERVERS:-"dovecot sqlite postgres"}
SECS=${SECS:-30}
CLIENTS=${CLIENTS:-10}
TIMEOUT=${TIMEOUT:-600}
want() { case " $SERVERS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
[ "$(id -u)" = 0 ] || { echo "imaptest.sh: must run as root (Dovecot, PostgreSQL)" >&2; exit 1; }
! want dovecot || command -v dovecot >/dev/null || { echo "imaptest.sh: install dovecot-imapd" >&2; exit 1; }

nats_bin=$("$root/scripts/deps.sh")
[ "${BUILD:-1}" = 0 ] || [ -n "${SERVE:-}" ] || (cd "$root" && cargo build --release -q -p tern-mailbox --example mailbox_serve)
serve=${SERVE:-"$root/target/release/examples/mailbox_serve"}

work=$(mktemp -d /tmp/tern-imaptest.XXXXXX)
chmod 755 "$work"
logs="$work/logs"; mkdir -p "$logs"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "${pgbin:-}" ] && runuser -u postgres -- "$pgbin/pg_ctl" -m immediate -D "$work/pg/data" stop >/dev/null 2>&1 || true
  # Keep the logs; drop the data.
  find "$work" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
}
trap cleanup EXIT
# shellcheck source=../bench/mailbox/dovecot.sh
. "$root/deploy/bench/mailbox/dovecot.sh"


# The stress mbox: the first 50 messages of the suite's mboxes.
python3 - "$tests" "$work/stress.mbox" <<'PY'
import glob, re, sys
msgs = []
for f in sorted(glob.glob(sys.argv[1] + "/*.mbox")):
    text = open(f, "rb").read()
    for m in re.split(rb"(?m)^(?=From )", text):
        if m.startswith(b"From "):
            msgs.append(m if m.endswith(b"\n") else m + b"\n")
out = open(sys.argv[2], "wb")
for m in msgs[:50]:
    out.write(m)
PY

results="$work/results"; : > "$results"

# run_suite LABEL PORT USER_SCRIPTED USER_STRESS_PATTERN PASS
run_suite() {
  local label=$1 port=$2 user=$3 stress_user=$4 pass=$5
  timeout "$TIMEOUT" "$imaptest" host=127.0.0.1 port="$port" user="$user" pass="$pass" \
    test="$tests" >"$logs/$label.scripted" 2>&1 || true
  timeout "$TIMEOUT" "$imaptest" host=127.0.0.1 port="$port" user="$stress_user" pass="$pass" \
    users="$CLIENTS" mbox="$work/stress.mbox" clients="$CLIENTS" secs="$SECS" >"$logs/$label.stress" 2>&1 || true
  python3 - "$label" "$logs/$label.scripted" "$logs/$label.stress" >>"$results" <<'PY'
import re, sys
label, scripted, stress = sys.argv[1:]
s = open(scripted, errors="replace").read()
g = re.search(r"(\d+) test groups: (\d+) failed", s)
b = re.search(r"base protocol: (\d+)/(\d+)", s)
e = re.search(r"extensions: (\d+)/(\d+)", s)
t = open(stress, errors="replace").read()
errors = sum(1 for l in t.splitlines() if l.startswith("Error:") or "protocol violation" in l.lower())
fmt = lambda m, a, b: f"{m.group(a)}/{m.group(b)}" if m else "?"
print(f"{label}\t{fmt(g, 2, 1)}\t{fmt(b, 1, 2)}\t{fmt(e, 1, 2)}\t{errors}")
PY
}

nats_port=$(free_port)
"$nats_bin" -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" >/dev/null 2>&1 &
pids+=($!)
wait_port "$nats_port"

run_tern() {
  local label=$1 db=$2
  local imap_port; imap_port=$(free_port)
  local users=(--add-user imaptest@example.com:pass)
  for i in $(seq 1 "$CLIENTS"); do users+=(--add-user "stress$i@example.com:pass"); done
  # Loopback plaintext logins are allowed by default (allow_plaintext_auth = loopback).
  env -u TERN_NATS_SERVER TERN_DATA_DIR="$work/tern-$label" TERN_NATS_URL="nats://127.0.0.1:$nats_port" \
    TERN_HOSTNAME=imaptest.test TERN_LOCAL_DOMAINS=example.com TERN_DATABASE_URL="$db" \
    TERN_IMAP_LISTEN="127.0.0.1:$imap_port" TERN_IMAPS_LISTEN= TERN_POP3_LISTEN= TERN_POP3S_LISTEN= \
    TERN_MAILBOX_GRPC_LISTEN="127.0.0.1:$(free_port)" TERN_MAILBOX_ADMIN_LISTEN="127.0.0.1:$(free_port)" \
    "$serve" "${users[@]}" >"$logs/tern-$label.out" 2>"$logs/tern-$label.err" &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 1 600); do grep -q '^ready' "$logs/tern-$label.out" 2>/dev/null && break; sleep 0.1; done
  grep -q '^ready' "$logs/tern-$label.out" || { cat "$logs/tern-$label.err" >&2; exit 1; }
  wait_port "$imap_port"
  run_suite "tern-$label" "$imap_port" imaptest@example.com 'stress%d@example.com' pass
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run_dovecot() {
  local d="$work/dovecot" port; port=$(free_port)
  mkdir -p "$d"
  { echo "imaptest:{PLAIN}pass"; for i in $(seq 1 "$CLIENTS"); do echo "stress$i:{PLAIN}pass"; done; } > "$d/passwd"
  start_dovecot "$d" "$port" "$logs/dovecot.log"
  local pid=$dovecot_pid
  run_suite dovecot "$port" imaptest 'stress%d' pass
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

printf '\n%-16s %-14s %-16s %-16s %s\n' server "groups failed" "base cmds failed" "ext cmds failed" "stress errors"
while IFS=$'\t' read -r label g b e s; do
  printf '%-16s %-14s %-16s %-16s %s\n' "$label" "$g" "$b" "$e" "$s"
done < "$results"
echo "logs: $logs"
