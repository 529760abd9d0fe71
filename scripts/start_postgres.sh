#!/usr/bin/env bash
# Starts a private PostgreSQL cluster on 127.0.0.1:55432 (idempotent) and prints
# `export TEST_POSTGRES_URL=...` for eval. Runs initdb as the postgres user when invoked as root.
# PGTEST_DATA and PGTEST_PORT choose another folder and port; `--stop` stops that server.
set -euo pipefail
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
DATA=${PGTEST_DATA:-/tmp/codec-pgtest}
PORT=${PGTEST_PORT:-55432}
RUN=()
if [ "$(id -u)" -eq 0 ]; then RUN=(runuser -u postgres --); fi
if [ "${1:-}" = "--stop" ]; then   # stop the server of $PGTEST_DATA, if it runs
  "${RUN[@]}" "$BIN/pg_ctl" -D "$DATA" -m fast -w stop 2>/dev/null || true
  exit 0
fi
if [ ! -f "$DATA/PG_VERSION" ]; then
  mkdir -p "$DATA"; [ "$(id -u)" -eq 0 ] && chown postgres "$DATA"
  "${RUN[@]}" "$BIN/initdb" -D "$DATA" -U codec --auth=trust >/dev/null
fi
if ! "${RUN[@]}" "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  "${RUN[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w \
    -o "-p $PORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=on" start >/dev/null
fi
echo "export TEST_POSTGRES_URL=postgresql+psycopg://codec@127.0.0.1:$PORT/postgres"
