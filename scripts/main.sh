#!/usr/bin/env bash
# The main job: sets up .venv (pinned), runs the quickstart matrix, prints its leaderboard and
# writes its HTML report (runs/quickstart/report.html), also when some cells failed (exit 1).
source "$(dirname "$0")/env.sh" ""
cd "$ROOT"
status=0
saebench run examples/quickstart.yaml "$@" || status=$?
[ "$status" = 2 ] || saebench report runs/quickstart
exit "$status"
