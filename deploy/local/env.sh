# Sourced by the local scripts: where PostgreSQL is and how to log in, as
# deploy/local/services.sh found or set it up. PG_URL (no database name) can be set by
# hand; otherwise the URL services.sh wrote to deploy/local/.pg-url, otherwise the
# `postgres` role without a password (a cluster that trusts local TCP connections).
PG_URL_FILE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/.pg-url"
if [ -z "${PG_URL:-}" ]; then
  if [ -s "$PG_URL_FILE" ]; then
    PG_URL=$(cat "$PG_URL_FILE")
  else
    PG_URL=postgres://postgres@127.0.0.1:5432
  fi
fi
# The tests, the demo, the checks and the benchmarks all read their own variable.
export PG_URL
export TEST_PG_URL=${TEST_PG_URL:-$PG_URL}
export DEMO_PG=${DEMO_PG:-$PG_URL}
export CHECK_PG=${CHECK_PG:-$PG_URL}
export BENCH_PG=${BENCH_PG:-$PG_URL}
# Where cargo puts its binaries (CARGO_TARGET_DIR or the workspace's target/).
if [ -z "${TARGET_DIR:-}" ]; then
  TARGET_DIR=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null) \
    || TARGET_DIR=${CARGO_TARGET_DIR:-target}
fi
export TARGET_DIR
