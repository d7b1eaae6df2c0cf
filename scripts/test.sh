#!/usr/bin/env bash
# The test command: sets up .venv (pinned), checks lint, format and types, then runs every test
# (tests/unit, tests/plugins, tests/integration) and a smoke pass of the benchmarks.
# Extra arguments go to pytest: ./scripts/test.sh -m "not slow" is the inner loop (under 2 minutes).
source "$(dirname "$0")/env.sh" test
cd "$ROOT"
# the report's browser test drives Debian's chromium (Playwright's own download needs the internet)
if [ ! -x /usr/bin/chromium ]; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1 \
    || echo "saebench: could not install chromium; the report's browser tests will be skipped" >&2
fi
ruff check saebench plugins tests benchmarks examples
ruff format --check --quiet saebench plugins tests benchmarks examples
mypy
python -m pytest tests "$@"
SAEBENCH_BENCH_SMALL=1 python -m pytest benchmarks -q --benchmark-disable -p no:cacheprovider
