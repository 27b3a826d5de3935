#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (issue 19 §3, docs/reliability.md "Hostile
# input") over every parser that reads from the network.
#
#   scripts/fuzz.sh short          what CI runs (scripts/test.sh runs it as
#                                  part of `cargo test --workspace`): every
#                                  target over its corpus in fuzz/corpus/
#                                  plus bounded seeded mutations of it
#                                  (TERN_FUZZ_ITERS, default 4000 each).
#   scripts/fuzz.sh afl SECONDS [TARGET...]
#                                  coverage-guided: builds the AFL++ harness
#                                  (fuzz/afl) with `cargo afl` and runs each
#                                  target (default: all) for SECONDS, then
#                                  prints execs, execs/s, paths and crashes.
#                                  Output: target/afl-out/<target>/.
#
# The afl mode needs cargo-afl (`cargo install cargo-afl --locked`, then
# `cargo afl config --build`, which compiles AFL++ and its LLVM plugin for the
# installed rustc). scripts/deps.sh does NOT install them: together they take
# several minutes of compiling on every fresh machine (far over the minute a
# deps.sh step may cost), and CI needs neither, since the short mode runs the
# same targets as plain functions on stable Rust. Debian's `afl++` package
# alone is not enough: cargo-afl instruments with the AFL++ it builds for the
# exact rustc/LLVM in use.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

usage() {
  echo "usage: scripts/fuzz.sh short | afl SECONDS [TARGET...]" >&2
  exit 2
}

targets() {
  ls fuzz/corpus
}

case "${1:-}" in
short)
  exec cargo test -p tern-fuzz --locked --test corpus
  ;;
afl)
  secs=${2:-}
  [[ "$secs" =~ ^[0-9]+$ ]] || usage
  shift 2
  if ! cargo afl --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-afl is missing: cargo install cargo-afl --locked && cargo afl config --build" >&2
    exit 1
  fi
  list=("$@")
  [ ${#list[@]} -gt 0 ] || mapfile -t list < <(targets)
  # The harness is its own workspace (it builds only under cargo afl), with
  # its own target directory so its instrumented build never invalidates
  # the normal one.
  (cd fuzz/afl && cargo afl build --release --locked)
  bin=fuzz/afl/target/release/tern-afl
  out=target/afl-out
  mkdir -p "$out"
  # No UI (a log instead); no CPU pinning (the machine is shared); crashes
  # are found from the child's abort, not from core dumps.
  export AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1
  export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_CRASH_README=1
  status=0
  for t in "${list[@]}"; do
    [ -d "fuzz/corpus/$t" ] || { echo "fuzz.sh: no target $t" >&2; exit 2; }
    rm -rf "${out:?}/$t"
    echo "== $t: ${secs}s" >&2
    cargo afl fuzz -i "fuzz/corpus/$t" -o "$out/$t" -V "$secs" -- "$bin" "$t" \
      >"$out/$t.log" 2>&1 || { echo "fuzz.sh: afl-fuzz failed on $t, see $out/$t.log" >&2; status=1; }
  done
  printf '%-16s %8s %10s %9s %7s %8s\n' target run_s execs execs/s paths crashes
  for t in "${list[@]}"; do
    s="$out/$t/default/fuzzer_stats"
    [ -f "$s" ] || continue
    v() { sed -n "s/^$1 *: *//p" "$s"; }
    printf '%-16s %8s %10s %9s %7s %8s\n' "$t" "$(v run_time)" "$(v execs_done)" \
      "$(v execs_per_sec)" "$(v corpus_count)" "$(v saved_crashes)"
    if [ "$(v saved_crashes)" != 0 ]; then
      echo "fuzz.sh: $t crashed; inputs in $out/$t/default/crashes/" >&2
      status=1
    fi
  done
  exit $status
  ;;
*) usage ;;
esac
