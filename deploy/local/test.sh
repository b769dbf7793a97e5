#!/usr/bin/env bash
# Run every test against the local PostgreSQL and RabbitMQ (started if stopped): first the
# suite (in parallel), then the fault-injection scenarios, one at a time, because they
# stop and restart those services. Arguments go to the first `cargo test` (e.g. a filter);
# FAULTS=0 skips the fault scenarios.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/services.sh
. deploy/local/env.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
if [ "$status" -eq 0 ] && [ "${FAULTS:-1}" != 0 ]; then
  echo "== fault injection (serial)"
  cargo test --locked -p worker --test faults -- --ignored --test-threads=1 --nocapture 2>&1 | tee -a "$log" || status=$?
  deploy/local/services.sh   # whatever happened, leave the services running
fi
# One closing line for the whole run (cargo prints one per test binary).
mkdir -p target
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "workspace: %d passed, %d failed\n", p, f }' "$log" | tee target/test-summary.txt
exit $status
