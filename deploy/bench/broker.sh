#!/usr/bin/env bash
# The raw broker, as a baseline for deploy/bench/e2e.sh: RabbitMQ's CPU per persistent
# message on a quorum queue (test-support/src/bin/bench-broker.rs), by how many publishes
# wait for their confirms at once, and by how consumers ack. e2e.sh's loop publishes a task
# in a relay batch (pipelined) and its result one at a time from each running task, and
# acks the task one by one and the result in the recorder's batches.
#
# And at a fixed rate, by how many arrive together (PACED=RATE:GROUP,...): the results
# of one worker's tasks ending one at a time, or gathered (the worker's RESULTS_LINGER).
#
#   deploy/bench/broker.sh                       # N=20000, 400-byte bodies
#   N=6000 PUBLISHERS=1,4,16 PACED=800:1,800:8 deploy/bench/broker.sh
#
# The queue bench-broker-<pid> is deleted on exit. Run by hand, not in CI, on a quiet
# machine: RabbitMQ's CPU is read from /proc, whatever else it does in the meantime.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-20000}
BODY_BYTES=${BODY_BYTES:-400}
PUBLISHERS=${PUBLISHERS:-0,1,2,4,16,64}
PACED=${PACED:-800:1,800:2,800:4,800:8,800:16}
deploy/local/services.sh
. deploy/local/env.sh
cargo build --release --locked -p test-support --bin bench-broker
QUEUE=bench-broker-$$
trap 'rabbitmqctl delete_queue "$QUEUE" >/dev/null 2>&1 || true' EXIT
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); N=$N messages of $BODY_BYTES bytes per phase; $(nproc) cores; RabbitMQ $(rabbitmqctl version 2>/dev/null || echo '?')"
"$TARGET_DIR/release/bench-broker" "${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}" "$QUEUE" "$N" "$BODY_BYTES" "$PUBLISHERS" "$PACED"
