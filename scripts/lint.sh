#!/usr/bin/env bash
# ruff on the whole tree (installed by scripts/setup.sh test).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh" test
"$root/.venv/bin/ruff" check "$root"
