#!/usr/bin/env bash
# Run every test against the local PostgreSQL and RabbitMQ (started if stopped): first the
# suite (in parallel), then the fault-injection scenarios, one at a time, because they
# stop and restart those services. Arguments go to the first `cargo nextest run` (e.g. a
# filter); FAULTS=0 skips the fault scenarios.
#
# The runner is cargo-nextest (.config/nextest.toml): each test runs in a process of its
# own, and one that hangs is killed after a few minutes and reported with its output.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/services.sh
. deploy/local/env.sh
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest is missing; installing it (cargo install cargo-nextest --locked)"
  cargo install cargo-nextest --locked
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo nextest run --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
if [ "$status" -eq 0 ] && [ "${FAULTS:-1}" != 0 ]; then
  echo "== fault injection (serial)"
  cargo nextest run --locked --profile faults -p worker --test faults --run-ignored only \
    --no-capture 2>&1 | tee -a "$log" || status=$?
  deploy/local/services.sh   # whatever happened, leave the services running
fi
# One closing line for the whole run (nextest prints one summary per run).
mkdir -p target
awk '/Summary \[/ { for (i = 2; i <= NF; i++) {
       w = $i; gsub(/[,;]/, "", w)
       if (w == "passed") p += $(i-1)
       if (w == "failed") f += $(i-1)
       if (w == "timed" && $(i+1) ~ /^out/) f += $(i-1) } }
     END { printf "workspace: %d passed, %d failed\n", p, f }' "$log" | tee target/test-summary.txt
exit $status
