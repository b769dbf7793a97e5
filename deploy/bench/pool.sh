#!/usr/bin/env bash
# What a pooled connection costs per checkout (test-support/src/bin/bench-pool.rs): N
# short statements, each on a connection taken from the pool and given back, with sqlx's
# default (a ping as the connection is taken, and one as it goes back) against the
# worker's runs pool (shared/src/runtime/db.rs, `pool_options`: no ping on taking a
# connection given back less than 500 ms ago). CPU of the backend and of the client, and the
# wall time, in microseconds per statement; the two setups alternate ROUNDS times.
#
#   deploy/bench/pool.sh                 # N=20000, ROUNDS=3
#
# Connects to the local PostgreSQL's `postgres` database and writes nothing. Run by hand,
# not in CI, on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-20000}
ROUNDS=${ROUNDS:-3}
deploy/local/services.sh
. deploy/local/env.sh
cargo build --release --locked -p test-support --bin bench-pool
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); N=$N statements per setup; $(nproc) cores"
"$TARGET_DIR/release/bench-pool" "$BENCH_PG/postgres" "$N" "$ROUNDS"
