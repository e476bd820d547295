#!/usr/bin/env bash
# Instructions per published and per delivered event in a wharf node on the cluster backend
# (backend = "nats"), counted by valgrind's callgrind: the figure to judge a change to
# broker/src/backend/nats by, as bench/instructions.sh is for the embedded log.
#
# A 3-node NATS cluster (sync_interval: always, as the test harness and wharf-compare's
# cluster systems run it) is started on loopback; the wharf node (release build) runs under
# callgrind against it, with the fixed workload of bench/instructions.sh: one connection
# publishing with one publish in flight, then one durable consumer replaying the backlog and
# acking in batches of 500 (median of three runs each, each run on a stream of its own).
# Counted: the tokio runtime's threads (workers and blocking pool), where all of a wharf
# node's work on this backend happens (the sessions, the backend, async-nats's connection);
# the NATS servers run natively and are not counted. Each workload runs at two sizes and the
# difference is divided by the difference in events, so start-up and shutdown cancel out.
#   bench/instructions-nats.sh                      # 1000 and 3000 events
#   N1=2000 N2=6000 WHARF=/tmp/wharf bench/instructions-nats.sh
#   KEEP=/tmp/out bench/instructions-nats.sh        # keeps each run's callgrind.out there
#                                                   # (callgrind_annotate shows where)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
N1=${N1:-1000}
N2=${N2:-3000}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
command -v nats-server >/dev/null || { echo "nats-server is not installed (bench/run.sh installs it)" >&2; exit 1; }
if [ -z "${WHARF:-}" ]; then
    cargo build --release -q -p wharf-cli
    WHARF=${CARGO_TARGET_DIR:-$PWD/target}/release/wharf
fi
WORK=$(mktemp -d)
NATS_PIDS=()
cleanup() {
    for p in "${NATS_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The cluster: three nodes with routes to each other, stores under $WORK.
CLIENT=() ROUTE=() MONITOR=()
for i in 0 1 2; do CLIENT+=("$(free_port)"); ROUTE+=("$(free_port)"); MONITOR+=("$(free_port)"); done
ROUTES="nats-route://127.0.0.1:${ROUTE[0]}, nats-route://127.0.0.1:${ROUTE[1]}, nats-route://127.0.0.1:${ROUTE[2]}"
for i in 0 1 2; do
    cat >"$WORK/n$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:${CLIENT[$i]}
http: 127.0.0.1:${MONITOR[$i]}
jetstream {
  store_dir: "$WORK/n$i"
  sync_interval: always
}
cluster {
  name: wharf-instructions
  listen: 127.0.0.1:${ROUTE[$i]}
  routes: [$ROUTES]
}
EOF
    nats-server -c "$WORK/n$i.conf" -l "$WORK/n$i.log" &
    NATS_PIDS+=($!)
done
for i in 0 1 2; do
    for _ in $(seq 300); do
        curl -sf "http://127.0.0.1:${MONITOR[$i]}/healthz" >/dev/null && break
        sleep 0.1
    done
    curl -sf "http://127.0.0.1:${MONITOR[$i]}/healthz" >/dev/null || { echo "NATS node n$i is not healthy" >&2; tail "$WORK/n$i.log" >&2; exit 1; }
done
URLS="\"nats://127.0.0.1:${CLIENT[0]}\", \"nats://127.0.0.1:${CLIENT[1]}\", \"nats://127.0.0.1:${CLIENT[2]}\""

# Runs a wharf node under callgrind for one workload; prints the instructions of its
# runtime's threads.
count() { # scenario events
    local dir port id
    dir=$(mktemp -d -p "$WORK")
    # A stream of its own per run (count runs in a subshell: a counter would not carry).
    id=$(basename "$dir" | tr -dc 'a-zA-Z0-9')
    port=$(free_port)
    cat >"$dir/config.toml" <<EOF
listen = "127.0.0.1:$port"
data_dir = "$dir/data"
log_level = "warn"
backend = "nats"
[nats]
urls = [$URLS]
stream = "I$id"
subject_prefix = "i$id"
replicas = 3
publish_timeout = "30s"
EOF
    valgrind --tool=callgrind --callgrind-out-file="$dir/out" "$WHARF" serve --config "$dir/config.toml" 2>"$dir/valgrind.log" &
    local pid=$!
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
        sleep 0.1
    done
    "$WHARF" bench "$1" --url "ws://127.0.0.1:$port/ws" --events "$2" --connections 1 --in-flight 1 --json >"$dir/bench.json"
    kill -TERM "$pid"
    wait "$pid" || true
    if [ -n "${KEEP:-}" ]; then
        mkdir -p "$KEEP" && cp "$dir/out" "$KEEP/callgrind.$1-$2.$id.out"
    fi
    # tokio's threads, workers included, all run under the blocking pool's Inner::run.
    callgrind_annotate --inclusive=yes --threshold=100 "$dir/out" 2>/dev/null | grep -v '=>' |
        grep -E 'pool\.rs:tokio::runtime::blocking::pool::Inner::run \[' |
        awk '{gsub(",", "", $1); sum += $1} END {print sum}'
}

# shellcheck source=bench/instructions-report.sh
. bench/instructions-report.sh  # the scripts run from the repository root (cd above)
report "release build, backend nats" "1 in flight"
