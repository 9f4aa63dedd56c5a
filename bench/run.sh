#!/usr/bin/env bash
# `make bench`: run every benchmark in bench/ on this machine. Each writes its section of
# docs/benchmarks.md (--write), with the date, machine and CPU pressure, and the headline figures go
# to the summary table at the top. Run on a quiet machine.
set -uo pipefail
cd "$(dirname "$0")/.."
rc=0
for b in bench/bench_*.py; do
  [ -e "$b" ] || continue
  echo "=== $b"
  .venv/bin/python "$b" --write || rc=1
done
exit $rc
