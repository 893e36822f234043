#!/usr/bin/env bash
# Velocity's front door: install the build prerequisites that are missing (Debian/Ubuntu),
# build the release binary and run the logistics demo. Arguments go to `velocity demo`
# (e.g. --rate 200 --duration 60 --listen 127.0.0.1:6875 --data-dir ./velocity-data).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prerequisites.sh
install_packages "${BUILD_PACKAGES[@]}"
require_cargo
exec cargo run --release -- demo "$@"
