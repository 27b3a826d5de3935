#!/usr/bin/env bash
# The whole test suite: installs the pinned nats-server if missing, checks
# formatting and lints, then runs every test (unit, service, end to end).
# Tests start their own nats-server, PostgreSQL, DNS server and SMTP peers on
# loopback, on ephemeral ports, and stop them when they end.
set -euo pipefail
cd "$(dirname "$0")/.."
# The ingress test that holds 10,000 idle SMTP connections needs the fds.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
export TERN_NATS_SERVER="$(scripts/deps.sh --test)"
export TEST_REQUIRE_POSTGRES=1
# The mail-client tests (fetchmail, mutt in tmux) must not skip either.
export TEST_REQUIRE_FETCHMAIL=1 TEST_REQUIRE_MUTT=1 TEST_REQUIRE_TMUX=1
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# --no-fail-fast: one failing test binary must not hide the others; cargo
# still exits non-zero when any failed.
cargo test --workspace --locked --no-fail-fast "$@"
# Prometheus scrapes a running `tern up` and agrees with `tern queue stats`.
export TERN_BIN="${CARGO_TARGET_DIR:-target}/debug/tern"
deploy/observability/prometheus-check.sh "$TERN_BIN"
# The Helm chart: lint, render over several value sets, validate every
# manifest against the Kubernetes schemas, and `tern config check` each
# Deployment's environment.
scripts/helm-check.sh
# The production topology as processes on loopback (3-node NATS, PostgreSQL,
# two replicas of every service), with SIGKILLs mid-run; every message accounted for.
deploy/rehearse.sh
