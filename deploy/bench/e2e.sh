#!/usr/bin/env bash
# The whole loop, end to end: N dry-run cleanup_runs tasks POSTed by C concurrent clients (or
# at RATE a second; HTTP keep-alive) -> ledger + outbox -> relay (confirms) -> quorum queue -> W workers
# (WORKER_CONCURRENCY each) -> task.succeeded (confirms; a dry run sends no task.started
# unless it runs longer than STARTED_EVENT_AFTER) -> recorder ->
# ledger `succeeded`. Everything runs on this machine: release builds of producer-api and
# the worker, the local PostgreSQL and RabbitMQ.
#
# Prints: enqueue rate (202s per second while the clients post), end-to-end rate (tasks
# `succeeded` per second, from the first POST to the last success), enqueue latency p50 /
# p99, CPU seconds per 1,000 tasks of each process (API, each worker, every PostgreSQL
# process, RabbitMQ's beam.smp, the load generator) and the peak RSS of API and workers;
# then where the tasks waited (p50 / p99, from the ledger's timestamps: outbox to the
# relay's claim, queue to the worker, the work, the result to the recorder's commit),
# PostgreSQL's CPU and transactions committed per task on each database (ledger, runs) and
# what the ledger wrote.
# The API's /metrics at the end of each setup is kept in the logs directory
# (api-metrics-<n>.txt: its own latency histogram of the same POSTs).
# API_LOG_LEVEL sets producer-api's LOG_LEVEL (e.g. warn,producer_api::relay=debug), WORKER_LOG_LEVEL the workers';
# LEDGER_SQL runs on the ledger once the API has migrated it, before the load (what-if
# experiments: "ALTER TABLE cleanup_tasks SET (fillfactor = 70)").
# The workers take their other settings from the environment (RESULTS_LINGER=0s: each
# result reported as soon as its task ends); WORKER_WRAP runs each under a command
# ("nice -n 10": what the loop does when the workers yield the cores to the rest).
#
#   N=3000 C=32 W=1 WORKER_CONCURRENCY=8 deploy/bench/e2e.sh
#   RUNS="1:8 1:16 2:16" deploy/bench/e2e.sh     # several setups in one run (W:CONCURRENCY)
#   RUNS="0:0 2:16" deploy/bench/e2e.sh          # W=0: the enqueue path alone (relay on)
#   RATE=1500 RUNS="2:16" deploy/bench/e2e.sh     # open loop: 1,500 POSTs a second
#
# SESSIONS=own starts the API, each worker and the load generator in a session of its own
# (setsid); the default, shared, keeps them in the script's. With the kernel's autogroup
# scheduling on (kernel.sched_autogroup_enabled, printed in the header), each session's
# processes share one scheduling group, as a container's do in its cgroup.
#
# The load is a closed loop by default: C clients, each sending its next POST when its
# last is answered, as fast as the API answers (its latency is mostly its own queueing:
# C / rate). With RATE, an open loop: POST i is due at i / RATE seconds, at most C in
# flight, and its latency counts from when it was due (what a steady arrival of tasks at
# that rate would see, stalls included).
#
# WARMUP=<n> first sends n tasks the same way and waits until they all succeeded, then
# measures the N (what a running system sees: its connections open, its tables and the
# queues past their first pages); without it (the default), the N include the start.
#
# Databases bench_e2e_<pid>_* and the AMQP prefix bench-e2e-<pid>-* are removed on exit.
# Run by hand, not in CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-3000}
WARMUP=${WARMUP:-0}
C=${C:-32}
RUNS=${RUNS:-"${W:-1}:${WORKER_CONCURRENCY:-8}"}
RATE=${RATE:-0}
SESSIONS=${SESSIONS:-shared}
case "$SESSIONS" in
  own) ALONE=setsid ;;
  shared) ALONE= ;;
  *) echo "SESSIONS must be own or shared, not $SESSIONS" >&2; exit 2 ;;
esac
TIMEOUT=${TIMEOUT:-300}
TOKEN=bench-token-0123456789abcdef
SIGNING_KEYS=bench:bench-signing-secret-0123456789abcdef
DB=bench_e2e_$$
WORK=${BENCH_DIR:-/var/tmp/cleanup-bench-e2e-$$}
# TARGET_DIR=<dir> runs producer-api and the worker from there (another commit's release
# build, for an A/B run); the load generator is always this checkout's.
GIVEN_TARGET=${TARGET_DIR:-}
deploy/local/services.sh
unset TARGET_DIR
. deploy/local/env.sh
LOAD_BIN=$TARGET_DIR/release/bench-post
TARGET_DIR=${GIVEN_TARGET:-$TARGET_DIR}
PG=$BENCH_PG
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
CODE="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain -- Cargo.lock shared producer-api worker 2>/dev/null)" ]; then
  CODE="$CODE + uncommitted changes"
fi
[ -z "$GIVEN_TARGET" ] || CODE="binaries of $GIVEN_TARGET (the load generator and this script: $CODE)"
# Two builds: `--bin` would limit the first one to that binary.
cargo build --release --locked -p producer-api -p worker
cargo build --release --locked -p test-support --bin bench-post
mkdir -p "$WORK"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
sql() { psql -X -q -v ON_ERROR_STOP=1 "$PG/$1" "${@:2}"; }
value() { psql -X -tA -v ON_ERROR_STOP=1 "$PG/$1" -c "$2"; }
pids=() dbs=() prefixes=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for db in "${dbs[@]}"; do sql postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" 2>/dev/null || true; done
  for prefix in "${prefixes[@]}"; do
    rabbitmqctl list_queues name 2>/dev/null | grep "^$prefix\." | xargs -r -n1 rabbitmqctl delete_queue >/dev/null 2>&1 || true
    for x in $(rabbitmqctl list_exchanges name 2>/dev/null | grep "^$prefix\." || true); do
      rabbitmqctl eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$x\">>), false, <<\"bench\">>)." >/dev/null 2>&1 || true
    done
  done
  echo "logs: $WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# CPU ticks (utime + stime) of some processes; their peak RSS in kB.
ticks() { local t=0 p; for p in "$@"; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
pg_pids() { pgrep -x postgres | tr '\n' ' '; }
# "<pid> <database> <ticks>" of each PostgreSQL session of this run's databases.
pg_sessions() {
  local pid db
  value postgres "SELECT pid, datname FROM pg_stat_activity WHERE starts_with(datname, '${DB}_')" \
    | while IFS='|' read -r pid db; do echo "$pid $db $(ticks "$pid")"; done
}
# "<database> <transactions committed>" of this run's databases.
pg_commits() {
  value postgres "SELECT datname, xact_commit FROM pg_stat_database WHERE starts_with(datname, '${DB}_')" | tr '|' ' '
}
beam_pids() { pgrep -f beam.smp | tr '\n' ' '; }
HZ=$(getconf CLK_TCK)
# until_succeeded <count>: until that many tasks of the current setup's ledger ($LEDGER)
# succeeded, looking once a second (each look starts a psql, whose cost would land on the
# measured cores).
until_succeeded() {
  local since=$(date +%s) done_count
  while true; do
    done_count=$(value "$LEDGER" "SELECT count(*) FROM cleanup_tasks WHERE status = 'succeeded'")
    [ "$done_count" -ge "$1" ] && return
    if [ $(( $(date +%s) - since )) -gt "$TIMEOUT" ]; then echo "timed out: $done_count of $1 succeeded"; return; fi
    sleep 1
  done
}

create_db() { dbs+=("$1"); sql postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"; }
create_db "${DB}_runs"
sql "${DB}_runs" -f deploy/sql/runs-schema.sql
sql "${DB}_runs" -c "INSERT INTO runs (status, finished_at) SELECT 'succeeded', now() - interval '60 days' FROM generate_series(1, 100)"

if [ "$RATE" = 0 ]; then LOAD="C=$C clients (closed loop)"; else LOAD="RATE=$RATE POSTs/s (open loop, at most C=$C in flight)"; fi
echo "commit $CODE; N=$N tasks after WARMUP=$WARMUP, $LOAD; $(nproc) cores; SESSIONS=$SESSIONS (autogroup $(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo unknown))"
printf '%-6s %-5s %10s %10s %8s %8s   %s\n' workers conc "enqueue/s" "e2e/s" "p50 ms" "p99 ms" "CPU s per 1,000 tasks; peak RSS"
run=0
for setup in $RUNS; do
  run=$((run + 1))
  W=${setup%%:*} CONC=${setup##*:}
  PREFIX=bench-e2e-$$-$run
  prefixes+=("$PREFIX")
  LEDGER=${DB}_ledger_$run
  create_db "$LEDGER"
  API_PORT=$(free_port)
  API="http://127.0.0.1:$API_PORT"
  DATABASE_URL="$PG/$LEDGER" API_TOKENS=$TOKEN TASK_SIGNING_KEYS=$SIGNING_KEYS \
    LISTEN_ADDR=127.0.0.1:$API_PORT AMQP_PREFIX=$PREFIX LOG_LEVEL=${API_LOG_LEVEL:-warn} \
    $ALONE "$TARGET_DIR/release/producer-api" > "$WORK/producer-api-$run.log" 2>&1 &
  api_pid=$!
  pids+=("$api_pid")
  for _ in $(seq 1 100); do curl -fsS "$API/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
  curl -fsS "$API/readyz" >/dev/null || { echo "producer-api did not become ready; see $WORK/producer-api-$run.log"; exit 1; }
  worker_pids=()
  for i in $(seq 1 "$W"); do
    port=$(free_port)
    RUNS_DATABASE_URL="$PG/${DB}_runs" METRICS_ADDR=127.0.0.1:$port TASK_SIGNING_KEYS=$SIGNING_KEYS \
      AMQP_PREFIX=$PREFIX WORKER_KINDS=cleanup_runs WORKER_CONCURRENCY=$CONC LOG_LEVEL=${WORKER_LOG_LEVEL:-warn} \
      WORKER_ID=bench-$run-$i \
      $ALONE ${WORKER_WRAP:-} "$TARGET_DIR/release/worker" > "$WORK/worker-$run-$i.log" 2>&1 &
    worker_pids+=($!)
    pids+=($!)
    for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
  done
  # What-if experiments on the ledger (a fillfactor, an index dropped) without a rebuild.
  [ -z "${LEDGER_SQL:-}" ] || sql "$LEDGER" -c "$LEDGER_SQL"
  sleep 1
  if [ "$WARMUP" -gt 0 ]; then
    $ALONE "$LOAD_BIN" "$API/maintenance/cleanup-runs" "$TOKEN" "$WARMUP" "$C" \
      '{"max_age_hours": 720, "dry_run": true}' "$WORK/warmup-latencies-$run.txt" "$RATE" > "$WORK/warmup-$run.txt"
    [ "$W" = 0 ] || until_succeeded "$WARMUP"
  fi
  # (The sessions' snapshot first: its own psql must not land in the totals.)
  pg_sessions > "$WORK/sessions-before-$run.txt"
  pg_commits > "$WORK/commits-before-$run.txt"
  pg_before=$(ticks $(pg_pids)) beam_before=$(ticks $(beam_pids)) api_before=$(ticks "$api_pid")
  declare -A worker_before=()
  for p in "${worker_pids[@]}"; do worker_before[$p]=$(ticks "$p"); done
  # The load: keep-alive clients (test-support/src/bin/bench-post.rs, a fraction of the
  # CPU of a Python client), closed or open loop; latencies to a file.
  $ALONE "$LOAD_BIN" "$API/maintenance/cleanup-runs" "$TOKEN" "$N" "$C" \
    '{"max_age_hours": 720, "dry_run": true}' "$WORK/latencies-$run.txt" "$RATE" > "$WORK/load-$run.txt"
  # Until every task succeeded; the time comes from the ledger itself. With no worker (W=0:
  # the enqueue path alone, the relay publishing), nothing to wait for.
  [ "$W" = 0 ] || until_succeeded $((WARMUP + N))
  pg_after=$(ticks $(pg_pids)) beam_after=$(ticks $(beam_pids)) api_after=$(ticks "$api_pid")
  pg_sessions > "$WORK/sessions-after-$run.txt"
  read -r load_start load_took load_errors load_cpu < "$WORK/load-$run.txt"
  [ "$load_errors" = 0 ] || echo "warning: $load_errors enqueue requests were not answered 202"
  per_k() { python3 -c "print(f'{$1 / $HZ / $N * 1000:.2f}')"; }
  workers_cpu="" workers_rss=""
  for p in "${worker_pids[@]}"; do
    workers_cpu+="worker $(per_k "$(( $(ticks "$p") - ${worker_before[$p]} ))") "
    workers_rss+="$(( $(hwm "$p") / 1024 ))M "
  done
  read -r p50 p99 < <(python3 -c "
import sys; xs = sorted(float(l.split()[1]) for l in open('$WORK/latencies-$run.txt') if l.strip())
q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))] * 1000
print(f'{q(0.50):.1f} {q(0.99):.1f}')")
  enqueue_rate=$(python3 -c "print(f'{$N / $load_took:.0f}')")
  # From the first POST to the last task recorded `succeeded` (the recorder's commit time).
  e2e_rate=-
  if [ "$W" -gt 0 ]; then
    last_success=$(value "$LEDGER" "SELECT extract(epoch FROM max(updated_at)) FROM cleanup_tasks WHERE status = 'succeeded'")
    e2e_rate=$(python3 -c "print(f'{$N / ($last_success - $load_start):.0f}')")
  fi
  cpu="api $(per_k $((api_after - api_before))) ${workers_cpu}postgres $(per_k $((pg_after - pg_before))) rabbitmq $(per_k $((beam_after - beam_before))) load $(python3 -c "print(f'{$load_cpu / $N * 1000:.2f}')")"
  printf '%-6s %-5s %10s %10s %8s %8s   %s; rss api %sM, workers %s\n' "$W" "$CONC" "$enqueue_rate" "$e2e_rate" "$p50" "$p99" "$cpu" "$(( $(hwm "$api_pid") / 1024 ))" "$workers_rss"
  # Where each task waited, from the ledger's own timestamps (ms, p50 / p99): the outbox
  # until the relay's claim, the queue until the worker started it, the work, the
  # worker's result until the recorder's commit.
  value "$LEDGER" "
    WITH s AS (SELECT extract(epoch FROM published_at - created_at) * 1000 AS relay,
                      extract(epoch FROM started_at - published_at) * 1000 AS queue,
                      extract(epoch FROM finished_at - started_at) * 1000 AS work,
                      extract(epoch FROM updated_at - finished_at) * 1000 AS record
               FROM cleanup_tasks WHERE status = 'succeeded' AND created_at >= to_timestamp($load_start))
    SELECT format('       stages ms p50/p99: relay %s/%s, queue %s/%s, work %s/%s, record %s/%s', $(
      for c in relay queue work record; do
        printf "round(percentile_cont(0.5) WITHIN GROUP (ORDER BY %s)::numeric, 1), round(percentile_cont(0.99) WITHIN GROUP (ORDER BY %s)::numeric, 1)," "$c" "$c"
      done | sed 's/,$//')) FROM s"
  # PostgreSQL's CPU by database: the API's sessions on the ledger (enqueues, relay,
  # recorder) and the workers' on the runs database (the dry runs themselves); the rest
  # of its total is its background processes and this script's own queries. A session
  # opened during the load counts from zero.
  python3 -c "
before = {l.split()[0]: int(l.split()[2]) for l in open('$WORK/sessions-before-$run.txt') if l.strip()}
by_db = {'ledger': 0, 'runs': 0}
for line in open('$WORK/sessions-after-$run.txt'):
    if not line.strip(): continue
    pid, db, ticks = line.split()
    key = 'runs' if db.endswith('_runs') else 'ledger'
    by_db[key] += int(ticks) - before.get(pid, 0)
print('       postgres per task by database: ' + ', '.join(f'{k} {v / $HZ / $N * 1000:.2f} ms CPU' for k, v in by_db.items()))"
  # What the ledger wrote per task (its database is this run's own, warm-up included): row
  # updates, the share of them HOT (no new index entries), and bytes of table and of indexes.
  value "$LEDGER" "
    SELECT format('       ledger per task: %s row updates (%s%% HOT), %s B of tables, %s B of indexes',
      round(sum(n_tup_upd)::numeric / $((WARMUP + N)), 2),
      round(100.0 * sum(n_tup_hot_upd) / greatest(sum(n_tup_upd), 1)),
      round(sum(pg_table_size(relid))::numeric / $((WARMUP + N))), round(sum(pg_indexes_size(relid))::numeric / $((WARMUP + N))))
    FROM pg_stat_user_tables WHERE relname IN ('cleanup_tasks', 'cleanup_outbox')"
  # The API's own view of the same requests (its latency histogram), for comparison with
  # the clients' (what lies between is the kernel and the scheduler of the shared cores).
  curl -fsS "$API/metrics" > "$WORK/api-metrics-$run.txt" 2>/dev/null || true
  for p in "${worker_pids[@]}" "$api_pid"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  # Transactions committed per task on each database. A session reports its counts at most
  # once a second while busy, and all of them as it ends: so they are read once this
  # setup's API and workers have exited and their sessions ended.
  for _ in $(seq 1 50); do
    [ "$(value postgres "SELECT count(*) FROM pg_stat_activity WHERE starts_with(datname, '${DB}_')")" = 0 ] && break
    sleep 0.1
  done
  pg_commits > "$WORK/commits-after-$run.txt"
  python3 -c "
commits = {'ledger': 0, 'runs': 0}
before = {l.split()[0]: int(l.split()[1]) for l in open('$WORK/commits-before-$run.txt') if l.strip()}
for line in open('$WORK/commits-after-$run.txt'):
    if not line.strip(): continue
    db, n = line.split()
    commits['runs' if db.endswith('_runs') else 'ledger'] += int(n) - before.get(db, 0)
print('       transactions committed per task: ' + ', '.join(f'{k} {v / $N:.2f}' for k, v in commits.items()))"
done
