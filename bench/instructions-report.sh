# The part instructions.sh and instructions-nats.sh share: each defines `count SCENARIO
# EVENTS` (instructions of one run, from callgrind), sets N1 and N2, sources this file and
# calls `report`, which prints the instructions per published and per delivered event from
# the difference between the two sizes (fixed start-up costs cancel out).

# The median of three runs: tokio's workers spin a little before they park, so the count
# still moves by a few percent from run to run.
median() { # scenario events
    local a b c
    a=$(count "$1" "$2"); b=$(count "$1" "$2"); c=$(count "$1" "$2")
    printf '%s\n%s\n%s\n' "$a" "$b" "$c" | sort -n | sed -n 2p
}

report() { # what was measured, how publishes went
    local p1 p2 r1 r2
    p1=$(median publish "$N1"); p2=$(median publish "$N2")
    r1=$(median replay "$N1"); r2=$(median replay "$N2")
    python3 - "$N1" "$N2" "$p1" "$p2" "$r1" "$r2" "$1" "$2" <<'PY'
import sys
n1, n2, p1, p2, r1, r2 = map(int, sys.argv[1:7])
what, publishes = sys.argv[7], sys.argv[8]
per_publish = (p2 - p1) / (n2 - n1)
per_replayed = (r2 - r1) / (n2 - n1)
print(f"| figure (callgrind, {what}, {n1} and {n2} events) | instructions |")
print("|---|---|")
print(f"| per published event ({publishes}) | {per_publish:,.0f} |")
print(f"| per delivered event (durable replay, acks in batches of 500) | {per_replayed - per_publish:,.0f} |")
PY
}
