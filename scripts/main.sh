#!/usr/bin/env bash
# The main job: sets up .venv (pinned), then runs it.
source "$(dirname "$0")/env.sh" ""
cd "$ROOT"
saebench demo "$@"
