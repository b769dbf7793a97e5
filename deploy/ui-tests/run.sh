#!/usr/bin/env bash
# Browser tests of the operator console (/ui): Debian's chromium, driven by playwright-core
# from the npm registry (no browser download), against a real producer-api, worker,
# PostgreSQL and RabbitMQ started here. Screenshots of each page go to
# target/ui-screenshots/. Everything this run creates (two databases, an AMQP prefix,
# the processes) is removed when it ends.
set -euo pipefail
cd "$(dirname "$0")/../.."

deploy/local/services.sh
. deploy/local/env.sh

# Debian's chromium, installed once per machine.
if [ ! -x /usr/bin/chromium ]; then
  echo "installing Debian's chromium (once per machine)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
fi
(cd deploy/ui-tests && npm ci --no-audit --no-fund --loglevel=error)
cargo build --locked -p producer-api -p worker

RUN_ID=ui_$$
LEDGER_DB=${RUN_ID}_ledger RUNS_DB=${RUN_ID}_runs PREFIX=ui-tests-$$
STATE=$(mktemp -d)
SCREENSHOTS=$PWD/target/ui-screenshots
ADMIN_TOKEN=ui-admin-token-0123456789abcdef
READ_TOKEN=ui-read-token-0123456789abcdef
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
API_PORT=$(free_port) METRICS_PORT=$(free_port)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q "$PG_URL/postgres" -c "DROP DATABASE IF EXISTS $LEDGER_DB WITH (FORCE)" \
    -c "DROP DATABASE IF EXISTS $RUNS_DB WITH (FORCE)" >/dev/null 2>&1 || true
  rabbitmqctl list_queues name 2>/dev/null | grep "^$PREFIX\." | xargs -r -n1 rabbitmqctl delete_queue >/dev/null 2>&1 || true
  for x in $(rabbitmqctl list_exchanges name 2>/dev/null | grep "^$PREFIX\." || true); do
    rabbitmqctl eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$x\">>), false, <<\"ui-tests\">>)." >/dev/null 2>&1 || true
  done
  rm -rf "$STATE"
}
trap cleanup EXIT INT TERM

psql -q "$PG_URL/postgres" -c "CREATE DATABASE $LEDGER_DB" -c "CREATE DATABASE $RUNS_DB"
psql -q "$PG_URL/$RUNS_DB" -f deploy/sql/runs-schema.sql
psql -q "$PG_URL/$RUNS_DB" <<'SQL'
-- 200 old failed runs (the form's cleanup), 200,000 old succeeded ones (slow cleanups in
-- batches of 10, to cancel while they run), 100 recent ones (never eligible).
INSERT INTO runs (name, status, finished_at)
SELECT 'failed-' || g, 'failed', now() - interval '40 days' FROM generate_series(1, 200) g;
INSERT INTO runs (name, status, finished_at)
SELECT 'bulk-' || g, 'succeeded', now() - interval '50 days' + g * interval '1 second' FROM generate_series(1, 200000) g;
INSERT INTO runs (name, status, finished_at)
SELECT 'recent-' || g, 'succeeded', now() - interval '1 day' FROM generate_series(1, 100) g;
SQL
mkdir -p "$STATE/scratch" "$SCREENSHOTS"

export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f} AMQP_PREFIX=$PREFIX
export TASK_SIGNING_KEYS=ui-tests:ui-tests-signing-secret-0123456789abcdef
DATABASE_URL="$PG_URL/$LEDGER_DB" API_TOKENS="$ADMIN_TOKEN,viewer:read:$READ_TOKEN" \
  LISTEN_ADDR="127.0.0.1:$API_PORT" "$TARGET_DIR/debug/producer-api" > "$STATE/producer-api.log" 2>&1 &
pids+=($!)
RUNS_DATABASE_URL="$PG_URL/$RUNS_DB" TEMP_ROOTS="scratch=$STATE/scratch" \
  METRICS_ADDR="127.0.0.1:$METRICS_PORT" "$TARGET_DIR/debug/worker" > "$STATE/worker.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1 \
    && curl -fsS "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.5
done

status=0
(cd deploy/ui-tests && BASE_URL="http://127.0.0.1:$API_PORT" ADMIN_TOKEN=$ADMIN_TOKEN \
  READ_TOKEN=$READ_TOKEN SCREENSHOTS=$SCREENSHOTS npm test) || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- producer-api log (tail)"; tail -n 40 "$STATE/producer-api.log"
  echo "--- worker log (tail)"; tail -n 40 "$STATE/worker.log"
fi
echo "screenshots: $(ls "$SCREENSHOTS" | wc -l) in target/ui-screenshots/"
exit "$status"
