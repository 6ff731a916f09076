#!/usr/bin/env bash
# README command 1: set up, then run the main job on the embedded defaults: build a small demo
# catalogue from music21's O'Neill collection, check the bundled example (a song that lifts a
# phrase from one of those tunes), print the verdict with evidence and write demo/report.html.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/melodyguard demo --out demo "$@"
