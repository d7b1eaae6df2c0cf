#!/usr/bin/env bash
# Full-size benchmarks (minutes); results are written to benchmarks/RESULTS.md by hand from this output.
source "$(dirname "$0")/env.sh" test
cd "$ROOT"
python -m pytest benchmarks --benchmark-only --benchmark-columns=min,median,max,rounds "$@"
