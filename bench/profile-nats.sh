#!/usr/bin/env bash
# Where a wharf node on the cluster backend spends its CPU: runs one wharf-compare scenario
# of the wharf-nats system (one wharf node over a 3-node NATS cluster) and samples the wharf
# node with `perf record` (DWARF call graphs) for the whole scenario, then prints the
# functions with the most samples, self and inclusive.
#   bench/profile-nats.sh publish          # or replay, latency, fanout
#   WHARF=/tmp/wharf bench/profile-nats.sh replay --cluster-events 100000
# Extra arguments go to wharf-compare. The perf data stays in $OUT (default /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:?usage: bench/profile-nats.sh publish|replay|latency|fanout [wharf-compare args]}
shift
command -v perf >/dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
if [ -z "${WHARF:-}" ]; then
    cargo build --release -q -p wharf-cli -p wharf-bench
    WHARF=${CARGO_TARGET_DIR:-$PWD/target}/release/wharf
else
    cargo build --release -q -p wharf-bench
fi
COMPARE=${CARGO_TARGET_DIR:-$PWD/target}/release/wharf-compare
OUT=${OUT:-/tmp}
data="$OUT/wharf-nats-$scenario.perf.data"
"$COMPARE" --runs 1 --systems wharf-nats --scenarios "$scenario" --wharf "$WHARF" "$@" &
compare=$!
# The wharf node is wharf-compare's child that runs $WHARF; it starts after the cluster.
node=""
for _ in $(seq 600); do
    node=$(pgrep -P "$compare" -f -- "$WHARF serve" || true)
    [ -n "$node" ] && break
    sleep 0.05
done
[ -n "$node" ] || { echo "no wharf node appeared" >&2; wait "$compare"; exit 1; }
perf record -q -F 499 --call-graph dwarf,16384 -p "$node" -o "$data" 2>/dev/null &
perf_pid=$!
wait "$compare"
wait "$perf_pid" || true
# (awk rather than head: head would close the pipe early, which pipefail reports.)
echo "== self (top 40), $data"
perf report -i "$data" --no-children -g none --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | awk 'NR <= 40'
echo "== inclusive (top 60)"
perf report -i "$data" --children -g none --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | awk 'NR <= 60'
