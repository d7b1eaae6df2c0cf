#!/usr/bin/env bash
# Full-size benchmarks (~15 min on 2 cores; pass test files to run a subset). Prints a side-by-side
# summary; benchmarks/RESULTS.md records the latest one.
source "$(dirname "$0")/env.sh" test
cd "$ROOT"
python -m pytest "${@:-benchmarks}" --benchmark-enable --benchmark-columns=min,median,max,rounds -p no:cacheprovider
