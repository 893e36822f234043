#!/usr/bin/env bash
# The whole test suite on a fresh Debian/Ubuntu machine: installs what is missing (build
# packages, the Postgres server the CDC tests replicate from, the tansu Kafka broker, the
# drivers of the client compatibility tests), starts Postgres and a broker on 127.0.0.1 and
# runs `cargo test` (arguments go to it). With all that in place, `cargo test` alone works:
# the tests start Postgres and the broker themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prerequisites.sh
require_cargo

echo "== system packages"
# postgresql: the server binaries (and the `postgres` user) for tests/postgres_cdc.rs;
# pgjdbc and openssl for tests/clients.rs.
install_packages "${BUILD_PACKAGES[@]}" postgresql postgresql-client libpostgresql-jdbc-java openssl
command -v javac >/dev/null || install_packages default-jdk-headless
command -v npm >/dev/null || install_packages nodejs npm
python3 -m venv --help >/dev/null 2>&1 || install_packages python3-venv

echo "== kafka broker (tansu)"
# A Kafka-protocol broker for the Kafka source and sink tests; the install (~25 min on 2
# cores) is kept in ~/.cargo/bin.
if [[ ! -x "$HOME/.cargo/bin/tansu" ]]; then
    time cargo install tansu --features dynostore --locked
fi

echo "== clients: psycopg 3, SQLAlchemy, pandas, node-postgres, pgjdbc"
# A missing client fails its test, so these installs must succeed.
if [ ! -x tests/clients/.venv/bin/python ]; then python3 -m venv tests/clients/.venv; fi
tests/clients/.venv/bin/pip install -q 'psycopg[binary]' sqlalchemy pandas
(cd tests/clients/node && npm ci --no-audit --no-fund --silent)

echo "== services"
export VELOCITY_KAFKA_STATE="${VELOCITY_KAFKA_STATE:-${TMPDIR:-/tmp}/velocity-kafka-suite}"
VELOCITY_TEST_KAFKA="$(scripts/kafka-test.sh start)"
export VELOCITY_TEST_KAFKA
trap 'scripts/kafka-test.sh stop; scripts/postgres-test.sh stop' EXIT
# A throwaway Postgres with wal_level=logical on 127.0.0.1:54329 (the tests would start it
# themselves; starting it here makes its failures visible early).
VELOCITY_TEST_POSTGRES="$(scripts/postgres-test.sh start | tail -n1)"
export VELOCITY_TEST_POSTGRES
echo "broker on $VELOCITY_TEST_KAFKA; postgres: $VELOCITY_TEST_POSTGRES"

echo "== test"
time cargo test "$@"
