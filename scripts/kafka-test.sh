#!/usr/bin/env bash
# A tansu Kafka broker on loopback for the integration tests (memory storage, nothing on disk
# but its log).
#
#   scripts/kafka-test.sh start [--owner PID]   prints the broker address (127.0.0.1:PORT)
#   scripts/kafka-test.sh stop
#
# `start` reuses the broker already running for the same state directory. With `--owner`, the
# broker stops by itself once every process that started or reused it that way has exited
# (test binaries do; several run one after another and share it).
# State: $VELOCITY_KAFKA_STATE (default: $TMPDIR/velocity-kafka-test); tansu: $TANSU (default:
# ~/.cargo/bin/tansu, installed by `cargo install tansu --features dynostore --locked`).
set -euo pipefail

STATE="${VELOCITY_KAFKA_STATE:-${TMPDIR:-/tmp}/velocity-kafka-test}"
TANSU="${TANSU:-$HOME/.cargo/bin/tansu}"
mkdir -p "$STATE"

running() {
    [[ -f "$STATE/pid" && -f "$STATE/address" ]] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null
}

listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
    local owner=""
    if [[ "${1:-}" == "--owner" ]]; then owner="$2"; fi
    exec 9>"$STATE/lock"
    flock 9
    if running; then
        if [[ -n "$owner" && -f "$STATE/owners" ]]; then echo "$owner" >>"$STATE/owners"; fi
        cat "$STATE/address"
        return
    fi
    rm -f "$STATE/owners"
    if [[ ! -x "$TANSU" ]]; then
        echo "kafka-test: $TANSU not found; install it: cargo install tansu --features dynostore --locked" >&2
        exit 1
    fi
    for _ in 1 2 3 4 5; do
        local port=$(( 20000 + RANDOM % 40000 ))
        listening "$port" && continue
        # setsid + closed fds: the broker outlives this script and holds no caller's pipe.
        setsid "$TANSU" broker \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine "memory://tansu/" \
            </dev/null >"$STATE/tansu.log" 2>&1 9>&- &
        local pid=$!
        for _ in $(seq 1 300); do
            if listening "$port"; then
                echo "$pid" >"$STATE/pid"
                echo "127.0.0.1:$port" >"$STATE/address"
                if [[ -n "$owner" ]]; then
                    echo "$owner" >"$STATE/owners"
                    setsid bash "$0" watch "$pid" </dev/null >/dev/null 2>&1 9>&- &
                fi
                cat "$STATE/address"
                return
            fi
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill "$pid" 2>/dev/null || true
    done
    echo "kafka-test: tansu did not start; log: $STATE/tansu.log" >&2
    tail -20 "$STATE/tansu.log" >&2 || true
    exit 1
}

# Stop broker PID once no process listed in the owners file is alive (checked under the lock,
# so a `start` that reuses the broker is never cut off).
watch() {
    local pid="$1"
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        exec 9>"$STATE/lock"
        flock 9
        local alive=""
        while read -r owner; do
            if kill -0 "$owner" 2>/dev/null; then alive=1; break; fi
        done <"$STATE/owners"
        if [[ -z "$alive" ]]; then
            kill "$pid" 2>/dev/null || true
            rm -f "$STATE/pid" "$STATE/address" "$STATE/owners"
            return
        fi
        exec 9>&-
    done
}

stop() {
    if running; then
        kill "$(cat "$STATE/pid")" 2>/dev/null || true
    fi
    rm -f "$STATE/pid" "$STATE/address"
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) stop ;;
    watch) shift; watch "$@" ;;
    *) echo "usage: $0 start [--owner PID] | stop" >&2; exit 2 ;;
esac
