# Sourced by scripts/demo.sh, scripts/test.sh and .ci/run: what building Velocity needs from
# Debian/Ubuntu, and a function that installs only what is missing.

# librocksdb-dev: RocksDB is linked from Debian (.cargo/config.toml); clang and libclang-dev
# for bindgen; cmake and libcurl4-openssl-dev build the librdkafka bundled with rdkafka.
BUILD_PACKAGES=(librocksdb-dev clang libclang-dev pkg-config cmake libcurl4-openssl-dev)

# install_packages PKG...: apt-get install those not installed yet (with sudo unless root).
install_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing: ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

require_cargo() {
    command -v cargo >/dev/null || { echo "cargo is missing: install Rust (https://rustup.rs) first" >&2; exit 1; }
}
