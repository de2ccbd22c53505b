#!/usr/bin/env bash
# Quickstart, the tests: install, start the real Kafka + Redis, run the whole suite against them.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh test,bench

# docker-compose (Debian's v1 package) validates docker-compose.yml without a Docker engine.
if ! command -v docker-compose >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== installing docker-compose (to validate docker-compose.yml)" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose) >/dev/null
fi

# Debian's chromium drives the dashboard test in a real (headless) browser.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== installing chromium (for the dashboard test)" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
fi

.venv/bin/journey stack up --redis-cluster
mkdir -p test-output
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests; that is a broken suite, not a pass" >&2
  exit 1
fi
exit "$rc"
