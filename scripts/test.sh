#!/usr/bin/env bash
# The test command: sets up .venv (pinned), then runs the unit tests and a smoke pass of the benchmarks.
source "$(dirname "$0")/env.sh" test
cd "$ROOT"
python -m pytest tests "$@"
SAEBENCH_BENCH_SMALL=1 python -m pytest benchmarks -q --benchmark-disable -p no:cacheprovider
