#!/usr/bin/env bash
# Create .venv and install journey-tracker into it (idempotent). Sourced by demo.sh and test.sh.
# Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh test
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-}"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: journey-tracker needs Python >= 3.11 (found: $("$python" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
for tool in java mvn; do
  command -v "$tool" >/dev/null || echo "warning: '$tool' not found; \`journey stack up\` needs Java 17+ and Maven to run Kafka" >&2
done

if [ ! -x "$root/.venv/bin/python" ]; then
  echo "== creating $root/.venv" >&2
  "$python" -m venv "$root/.venv"
fi
spec="$root"
[ -n "$extras" ] && spec="$root[$extras]"
stamp="$root/.venv/.installed-${extras:-base}"
# Reinstall only when the project's metadata changed since the last install.
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  echo "== installing journey-tracker${extras:+ [$extras]} into .venv" >&2
  "$root/.venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
  "$root/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$spec" >&2
  touch "$stamp"
fi
