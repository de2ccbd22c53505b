#!/usr/bin/env bash
# Quickstart, the main job: install, start Kafka + Redis, run the worker, feed it simulated
# traffic and show a live summary. Extra arguments go to `journey demo` (see --help).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
exec "$root/.venv/bin/journey" demo "$@"
