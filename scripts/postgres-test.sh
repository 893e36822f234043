#!/usr/bin/env bash
# A throwaway Postgres 15 with logical replication, for the postgres-cdc tests.
#
#   scripts/postgres-test.sh start   # prints the libpq connection string on its last line
#   scripts/postgres-test.sh stop    # stops it and removes its data directory
#
# Listens on 127.0.0.1:${VELOCITY_PG_PORT:-54329}; data in ${VELOCITY_PG_DIR:-/tmp/velocity-pg-$PORT}.
# Role `velocity` (superuser, so it can create publications and replication slots) and
# database `tms`. `start` is idempotent and safe to run concurrently (tests call it).
# initdb refuses to run as root, so as root the server runs as the `postgres` user.
set -euo pipefail

PORT="${VELOCITY_PG_PORT:-54329}"
DIR="${VELOCITY_PG_DIR:-/tmp/velocity-pg-$PORT}"
BIN="${VELOCITY_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}"
CONN="host=127.0.0.1 port=$PORT user=velocity dbname=tms"

as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

ready() { "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; }

case "${1:-}" in
start)
    [ -x "$BIN/initdb" ] || { echo "no Postgres server binaries (apt-get install postgresql)" >&2; exit 1; }
    mkdir -p "$DIR"
    [ "$(id -u)" = 0 ] && chown postgres: "$DIR"
    exec 9>"$DIR.lock"
    flock 9
    if ! ready; then
        if [ ! -f "$DIR/data/PG_VERSION" ]; then
            as_owner "$BIN/initdb" -D "$DIR/data" -A trust -U postgres >"$DIR/initdb.log" 2>&1
        fi
        as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 start -o \
            "-c wal_level=logical -c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories=$DIR \
             -c max_replication_slots=64 -c max_wal_senders=64 -c max_connections=200 -c fsync=off" \
            </dev/null >/dev/null 2>&1 9>&-   # the server must not inherit the lock or the caller's pipes
    fi
    psql() { command psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }
    if [ "$(psql -d postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'velocity'")" != 1 ]; then
        psql -d postgres -c "CREATE ROLE velocity LOGIN SUPERUSER REPLICATION"
    fi
    if [ "$(psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'tms'")" != 1 ]; then
        psql -d postgres -c "CREATE DATABASE tms OWNER velocity"
    fi
    echo "$CONN"
    ;;
stop)
    if [ -f "$DIR/data/PG_VERSION" ]; then
        as_owner "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$DIR" "$DIR.lock"
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
