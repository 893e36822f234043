#!/usr/bin/env bash
# Velocity's front door: install the build prerequisites that are missing (Debian/Ubuntu),
# build the release binary and run the logistics demo. Arguments go to `velocity demo`
# (e.g. --rate 200 --duration 60 --listen 127.0.0.1:6875 --data-dir ./velocity-data).
set -euo pipefail
cd "$(dirname "$0")/.."

# librocksdb-dev: RocksDB is linked from Debian (.cargo/config.toml); clang/libclang-dev for
# bindgen; cmake and libcurl4-openssl-dev build the librdkafka bundled with rdkafka.
PACKAGES=(librocksdb-dev clang libclang-dev pkg-config cmake libcurl4-openssl-dev)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing build prerequisites: ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "cargo is missing: install Rust (https://rustup.rs) first" >&2; exit 1; }
exec cargo run --release -- demo "$@"
