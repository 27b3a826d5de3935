#!/usr/bin/env bash
# Runs the SMTP parser / DATA / BDAT / session property harness
# (crates/smtp/tests/properties.rs) with many more cases than `cargo test`.
#   crates/smtp/fuzz.sh [cases-per-property] [first-seed]
# Bounded: the default is 200000 cases per property, seeds from the time
# (printed, so a failure can be reproduced with the same first seed).
set -euo pipefail
cd "$(dirname "$0")/../.."
iters=${1:-200000}
seed=${2:-$(date +%s)}
echo "properties: $iters cases each, first seed $seed" >&2
TERN_FUZZ_ITERS=$iters TERN_FUZZ_SEED=$seed \
  exec cargo test -q -p tern-smtp --test properties -- --test-threads=2
