#!/usr/bin/env bash
# Instructions per published and per delivered event, counted by valgrind's callgrind: a
# figure that does not move with the load of this shared machine, to judge a change by.
#
# The broker (release build) runs under callgrind; the workload is fixed: one connection
# publishing with one publish in flight (one group commit per event, so the batching does
# not depend on timing), then one durable consumer replaying the backlog and acking in
# batches of 500 (median of three runs each). Counted: the threads that do the broker's
# work (tokio's, the log writer's, and the state view writer's sled batches), with what
# they call in sled. Each workload runs at two sizes and the difference is divided by the
# difference in events, so start-up and shutdown cancel out.
#   bench/instructions.sh            # 1000 and 3000 events
#   N1=2000 N2=6000 bench/instructions.sh
#   BATCH=64 bench/instructions.sh   # the replay subscriber asks for 64 events a frame
# (The writer's and the state view's functions are matched whatever their module path:
# from the architecture rework until 2026-11-29 the patterns named the paths from before
# it, `wharf_broker::log::writer::Writer::run` in writer.rs, and missed both threads now in
# backend/log/append/writer/mod.rs and backend/log/state.rs.)
# The cluster backend has its own: bench/instructions-nats.sh.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
N1=${N1:-1000}
N2=${N2:-3000}
# BATCH=64: the replaying subscriber asks for up to 64 events a frame (`batch`); 1, the
# default, is one event frame each.
BATCH=${BATCH:-1}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
# WHARF=/path/to/wharf measures that build instead of building one.
if [ -z "${WHARF:-}" ]; then
    cargo build --release -q -p wharf-cli
    WHARF=${CARGO_TARGET_DIR:-$PWD/target}/release/wharf
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Runs the broker under callgrind for one workload; prints its total instruction count.
count() { # scenario events
    local dir port
    dir=$(mktemp -d -p "$WORK")
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    printf 'listen = "127.0.0.1:%s"\ndata_dir = "%s/data"\nlog_level = "warn"\n' "$port" "$dir" >"$dir/config.toml"
    valgrind --tool=callgrind --callgrind-out-file="$dir/out" "$WHARF" serve --config "$dir/config.toml" 2>"$dir/valgrind.log" &
    local pid=$!
    for _ in $(seq 300); do
        curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
        sleep 0.1
    done
    local batch=()
    [ "$1" = replay ] && [ "$BATCH" -gt 1 ] && batch=(--batch "$BATCH")
    "$WHARF" bench "$1" --url "ws://127.0.0.1:$port/ws" --events "$2" --connections 1 --in-flight 1 "${batch[@]}" --json >"$dir/bench.json"
    kill -TERM "$pid"
    wait "$pid" || true
    # Only the broker's own threads: tokio's (workers and blocking pool), the log writer and
    # the state view's writer (its sled batches: StateView::save).
    # sled's background threads spin on a lazy value, which under valgrind's serialised
    # threads costs instructions in proportion to wall time, not to the work done.
    callgrind_annotate --inclusive=yes --threshold=100 "$dir/out" 2>/dev/null | grep -v '=>' |
        grep -E 'pool\.rs:tokio::runtime::blocking::pool::Inner::run \[|:wharf_broker::([a-z_]+::)*writer::Writer::run \[|:wharf_broker::([a-z_]+::)*state::StateView::save \[' |
        awk '{gsub(",", "", $1); sum += $1} END {print sum}'
}

# shellcheck source=bench/instructions-report.sh
. bench/instructions-report.sh  # the scripts run from the repository root (cd above)
report "release build" "1 in flight: one group commit each"
