#!/usr/bin/env bash
# The main job: sets up .venv (pinned), then runs the quickstart matrix and prints its leaderboard.
source "$(dirname "$0")/env.sh" ""
cd "$ROOT"
saebench run examples/quickstart.yaml "$@"
