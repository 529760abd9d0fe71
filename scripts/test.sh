#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine and runs it.
# System packages (chromium for Playwright, postgresql for the study tests) need root.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements-dev.txt

# A throwaway PostgreSQL server for the database tests (tests/study/conftest.py reads
# TEST_POSTGRES_URL): its own data folder and a free port, so checkouts never share one, and
# stopped and removed when the tests end.
PGTEST_DATA=$(mktemp -d /tmp/codec-pgtest.XXXXXX)
PGTEST_PORT=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PGTEST_DATA PGTEST_PORT
trap 'bash scripts/start_postgres.sh --stop >/dev/null; rm -rf "$PGTEST_DATA"' EXIT
eval "$(bash scripts/start_postgres.sh)"

export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
# Two pytest processes (pytest-xdist), each test file whole in one of them so that its module
# fixtures are built once: on 2 cores the suite takes ~17 minutes instead of ~24 (every test is
# single-threaded). TEST_WORKERS=0 runs it in one process; a later -n in "$@" wins.
.venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
