#!/usr/bin/env bash
# Nexmark through Apache Flink SQL (PyFlink) and through Velocity on the same events; prints the
# ratio per query. Arguments go to scripts/nexmark-flink.py (--events N, --queries q0,q3,...).
# Needs Java 17 (Flink 1.20 runs on it) and Python 3.11; PyFlink goes into a venv under
# ~/.cache/velocity-pyflink. VELOCITY=path/to/velocity uses that binary instead of building
# the release one.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${HOME}/.cache/velocity-pyflink"
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import pyflink' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'apache-flink==1.20.*'
fi
command -v java >/dev/null || { echo "Flink needs a Java runtime (apt-get install default-jre-headless)" >&2; exit 1; }
if [[ -z "${VELOCITY:-}" ]]; then
    cargo build --release --bin velocity
    VELOCITY="${CARGO_TARGET_DIR:-target}/release/velocity"
fi
export PYTHONWARNINGS=ignore::UserWarning
exec "$venv/bin/python" scripts/nexmark-flink.py --velocity "$VELOCITY" "$@"
