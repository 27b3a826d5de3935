#!/usr/bin/env bash
# Build and run Tern: all five services in one process (`tern up`), with a
# managed nats-server (installed into .venv on first run) and data in ./tern-data.
set -euo pipefail
cd "$(dirname "$0")/.."
export TERN_NATS_SERVER="${TERN_NATS_SERVER:-$(scripts/deps.sh)}"
cargo build --release --locked --bin tern
exec target/release/tern up "$@"
