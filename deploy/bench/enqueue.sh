#!/usr/bin/env bash
# Benchmark enqueue (POST /maintenance/cleanup-runs) with wrk on loopback, then the
# relay's publish rate on the backlog that produced. Prints requests/s, latency
# percentiles and messages/s. Needs wrk (apt-get install wrk); run by hand, not in CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${BENCH_PORT:-18080}
TOKEN=bench-token-0123456789abcdef
SIGNING_KEYS=bench:bench-signing-secret-0123456789abcdef
PREFIX=bench-$$
DB=cleanup_bench
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk"; exit 1; }
deploy/local/services.sh
. deploy/local/env.sh
PG=$BENCH_PG
cargo build --release --locked -p producer-api
psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"

start_api() {  # $1 = relay enabled
  DATABASE_URL="$PG/$DB" API_TOKENS=$TOKEN TASK_SIGNING_KEYS=$SIGNING_KEYS LISTEN_ADDR=127.0.0.1:$PORT AMQP_PREFIX=$PREFIX \
    RELAY_ENABLED=$1 RECORDER_ENABLED=false LOG_LEVEL=warn "$TARGET_DIR/release/producer-api" &
  API_PID=$!
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "API did not start"; exit 1
}
count() { psql -tA "$PG/$DB" -c "$1"; }
trap 'kill $API_PID 2>/dev/null || true; wait 2>/dev/null || true; psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"; rabbitmqctl list_queues name 2>/dev/null | grep "^$PREFIX\." | xargs -r -n1 rabbitmqctl delete_queue >/dev/null 2>&1 || true' EXIT

script=$(mktemp --suffix=.lua)
cat > "$script" <<LUA
wrk.method = "POST"
wrk.body = '{"max_age_hours": 720, "dry_run": true}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA

echo "== enqueue, relay running in the same process ($CONNECTIONS connections, $DURATION)"
start_api true
wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$script" "http://127.0.0.1:$PORT/maintenance/cleanup-runs"
sleep 2
echo "tasks stored: $(count 'SELECT count(*) FROM cleanup_tasks'), outbox left: $(count 'SELECT count(*) FROM cleanup_outbox')"
kill $API_PID; wait $API_PID 2>/dev/null || true

echo "== enqueue only (relay off): the backlog for the relay measurement"
start_api false
wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$script" "http://127.0.0.1:$PORT/maintenance/cleanup-runs"
kill $API_PID; wait $API_PID 2>/dev/null || true
backlog=$(count 'SELECT count(*) FROM cleanup_outbox')

echo "== relay: publishing a backlog of $backlog messages with confirms"
start=$(date +%s.%N)
start_api true
while [ "$(count 'SELECT count(*) FROM cleanup_outbox')" != 0 ]; do sleep 0.05; done
end=$(date +%s.%N)
python3 -c "b=$backlog; s=$end-$start; print(f'relay: {b} messages in {s:.2f}s = {b/s:.0f} messages/s (start-up included)')"
