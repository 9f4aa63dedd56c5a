#!/usr/bin/env bash
# `make bench`: run every benchmark in bench/ on this machine. Each appends its results, with the
# date, machine and CPU pressure, to docs/benchmarks.md. Run on a quiet machine.
set -uo pipefail
cd "$(dirname "$0")/.."
rc=0
for b in bench/bench_*.py; do
  [ -e "$b" ] || continue
  echo "=== $b"
  .venv/bin/python "$b" || rc=1
done
exit $rc
