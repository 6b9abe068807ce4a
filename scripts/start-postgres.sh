#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server for the test suite and prints its admin URL.
#
# Installs PostgreSQL from the distribution's packages when it is missing, then runs its own
# cluster in a temporary directory on its own port, so it neither needs nor disturbs a server
# that may already run on this machine. Stop it with: scripts/start-postgres.sh stop
set -euo pipefail

PORT="${CI_GATEWAY_PG_PORT:-54329}"
DATA="${CI_GATEWAY_PG_DATA:-/tmp/ci-gateway-pg}"

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$dir" ] && [ -x "$dir/initdb" ] && echo "$dir"
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

if [ "${1:-}" = stop ]; then
  bin=$(pg_bin) && as_postgres "$bin/pg_ctl" -D "$DATA" -m fast stop >/dev/null 2>&1 || true
  exit 0
fi

if ! bin=$(pg_bin); then
  echo "PostgreSQL is not installed; installing it from the distribution's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  bin=$(pg_bin)
fi

if as_postgres "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  echo "postgres://postgres@127.0.0.1:$PORT/postgres"
  exit 0
fi

# A stopped cluster from an earlier run is started again, never wiped.
if [ ! -f "$DATA/PG_VERSION" ]; then
  mkdir -p "$DATA"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$DATA"
  as_postgres "$bin/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 >/dev/null
fi
as_postgres "$bin/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w \
  -o "-p $PORT -k $DATA -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" \
  start >/dev/null
echo "postgres://postgres@127.0.0.1:$PORT/postgres"
