#!/usr/bin/env bash
# Run the whole stack locally (PostgreSQL, RabbitMQ, producer-api, one worker), seed a
# demo runs table and a demo temp directory, and show cleanups happening through the API.
# Leaves the stack running until Ctrl-C; pass --exit to stop after the demo.
set -euo pipefail
cd "$(dirname "$0")/../.."

deploy/local/services.sh
. deploy/local/env.sh

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# A port given by hand must be free; a default that is taken is replaced by a free one.
pick_port() { # variable name, default
  local name=$1 default=$2 port
  if [ -n "${!name:-}" ]; then
    port=${!name}
    if port_busy "$port"; then
      echo "$name=$port: something already listens on 127.0.0.1:$port; choose another port" >&2
      exit 1
    fi
  else
    port=$default
    if port_busy "$port"; then
      port=$(free_port)
      echo "port $default is taken; using $port for $name" >&2
    fi
  fi
  printf '%s' "$port"
}
API_PORT=$(pick_port API_PORT 8080)
WORKER_METRICS_PORT=$(pick_port WORKER_METRICS_PORT 9090)
TOKEN=${DEMO_TOKEN:-local-demo-token-change-me}
# One key ring for producer-api and the worker: task messages are signed with it.
SIGNING_KEYS=${DEMO_SIGNING_KEYS:-local-demo:local-demo-signing-secret-change-me-0123456789}
STATE=${DEMO_STATE:-/tmp/cleanup-demo}
PG=$DEMO_PG
API="http://127.0.0.1:${API_PORT}"
EXIT_AFTER=false
[ "${1:-}" = "--exit" ] && EXIT_AFTER=true

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
pretty() { python3 -m json.tool; }

say "building producer-api, worker and cleanupctl"
cargo build --locked -p producer-api -p worker -p cleanupctl

say "preparing the ledger database, a demo runs table and a demo temp directory"
psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS cleanup_demo_runs WITH (FORCE)" \
  -c "CREATE DATABASE cleanup_demo_runs"
psql -q "$PG/postgres" -tc "SELECT 1 FROM pg_database WHERE datname = 'cleanup'" | grep -q 1 \
  || psql -q "$PG/postgres" -c "CREATE DATABASE cleanup"
psql -q "$PG/cleanup_demo_runs" -f deploy/sql/runs-schema.sql
psql -q "$PG/cleanup_demo_runs" <<'SQL'
-- 1000 old finished runs (eligible), 200 old running ones and 300 recent ones (never eligible).
INSERT INTO runs (name, status, finished_at)
SELECT 'nightly-' || g, (ARRAY['succeeded', 'failed', 'cancelled'])[1 + g % 3], now() - interval '40 days' + g * interval '1 minute'
FROM generate_series(1, 1000) g;
INSERT INTO runs (name, status, finished_at) SELECT 'stuck-' || g, 'running', now() - interval '40 days' FROM generate_series(1, 200) g;
INSERT INTO runs (name, status, finished_at) SELECT 'recent-' || g, 'succeeded', now() - interval '2 days' FROM generate_series(1, 300) g;
INSERT INTO run_logs (run_id, line) SELECT id, 'log line' FROM runs, generate_series(1, 3);
SQL
rm -rf "$STATE" && mkdir -p "$STATE/scratch/cache" "$STATE/run"
for i in $(seq 1 50); do
  head -c 4096 /dev/zero > "$STATE/scratch/cache/old-$i.tmp"
  touch -d '3 days ago' "$STATE/scratch/cache/old-$i.tmp"
  head -c 1024 /dev/zero > "$STATE/scratch/fresh-$i.tmp"
done

say "starting producer-api on $API and a worker (metrics on :$WORKER_METRICS_PORT)"
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f} AMQP_PREFIX=${AMQP_PREFIX:-cleanup}
export TASK_SIGNING_KEYS="$SIGNING_KEYS"
DATABASE_URL="$PG/cleanup" API_TOKENS="$TOKEN" LISTEN_ADDR="127.0.0.1:$API_PORT" \
  "$TARGET_DIR/debug/producer-api" > "$STATE/run/producer-api.log" 2>&1 &
API_PID=$!
RUNS_DATABASE_URL="$PG/cleanup_demo_runs" TEMP_ROOTS="scratch=$STATE/scratch" \
  METRICS_ADDR="127.0.0.1:$WORKER_METRICS_PORT" \
  "$TARGET_DIR/debug/worker" > "$STATE/run/worker.log" 2>&1 &
WORKER_PID=$!
cleanup() { kill "$API_PID" "$WORKER_PID" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

for _ in $(seq 1 60); do
  curl -fsS "$API/readyz" >/dev/null 2>&1 && curl -fsS "http://127.0.0.1:$WORKER_METRICS_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.5
done
curl -fsS "$API/readyz" >/dev/null || { echo "producer-api did not become ready; see $STATE/run/producer-api.log"; exit 1; }

# Every step below is the CLI operators use (cleanupctl, built above).
export CLEANUP_SERVER="$API" CLEANUP_TOKEN="$TOKEN"
ctl() {
  echo "\$ cleanupctl $*"
  "$TARGET_DIR/debug/cleanupctl" "$@"
}

say "dry run: which runs older than 30 days would go?"
ctl runs --older-than 30d --dry-run --wait
say "real run, in batches of at most 200"
ctl runs --older-than 30d --batch-size 200 --wait
echo "runs left: $(psql -tA "$PG/cleanup_demo_runs" -c 'SELECT count(*) FROM runs') (the 200 running and 300 recent ones)"

say "temp files older than a day under root 'scratch' (dry run, then real)"
ctl temp-files --older-than 1d --root scratch --remove-empty-dirs --dry-run --wait
ctl temp-files --older-than 1d --root scratch --remove-empty-dirs --wait
echo "files left in $STATE/scratch: $(find "$STATE/scratch" -type f | wc -l)"

say "the tasks, as the ledger has them"
ctl tasks list --limit 4

say "a schedule: a dry run of the runs cleanup at every minute (the service fires it itself)"
cat > "$STATE/schedules.yaml" <<'YAML'
schedules:
  - name: demo-every-minute
    kind: cleanup_runs
    params: {max_age_hours: 720, dry_run: true}
    cron: "* * * * *"
YAML
# (The demo ledger persists between runs: start this schedule afresh.)
"$TARGET_DIR/debug/cleanupctl" schedules delete demo-every-minute >/dev/null 2>&1 || true
ctl schedules apply -f "$STATE/schedules.yaml"
echo "waiting for the window to fire (up to a minute)..."
fired=
for _ in $(seq 1 140); do
  fired=$("$TARGET_DIR/debug/cleanupctl" -o json schedules get demo-every-minute \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_task_id"] or "")')
  [ -n "$fired" ] && break
  sleep 0.5
done
if [ -n "$fired" ]; then
  ctl tasks watch "$fired" --wait-timeout 30s || true
else
  echo "the schedule did not fire; see $STATE/run/producer-api.log"
fi

say "worker metrics (excerpt)"
curl -fsS "http://127.0.0.1:$WORKER_METRICS_PORT/metrics" | grep -E '^cleanup_(runs_deleted|files_deleted|bytes_freed|worker_tasks_finished)' || true

if $EXIT_AFTER; then exit 0; fi
say "the stack is running: API $API (token: $TOKEN), logs in $STATE/run. Ctrl-C stops it."
echo "console: $API/ui (sign in with the token above)"
wait
