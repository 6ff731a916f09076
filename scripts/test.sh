#!/usr/bin/env bash
# README command 2: set up and run every check (lint, types, tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system_deps.sh
bash scripts/setup.sh
exec bash scripts/check
