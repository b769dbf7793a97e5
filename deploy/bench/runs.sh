#!/usr/bin/env bash
# Compare one plain `DELETE FROM runs WHERE status IN (...) AND finished_at < cutoff` with a
# real cleanup_runs task (POST /maintenance/cleanup-runs -> relay -> RabbitMQ -> one
# release-built worker -> GET /tasks/{id} says succeeded), on identical fresh copies of
# the same data (CREATE DATABASE ... TEMPLATE). ROWS runs (default 1,000,000, the size
# issue 10 measured) plus one run_logs row per run (ON DELETE CASCADE); the older half
# finished 60 to 120 days ago, the younger half 1 to 20 days ago, a third of each half is
# `running`; the cutoff is 720 hours. Cases:
#   1  finished_at indexed (deploy/sql/runs-schema.sql as shipped), batch_size default
#   2  the same, batch_size 1000 (the default before it became 10000, the largest)
#   3  no index on finished_at, batch_size default
#   3x case 3 again with 2 x ROWS (linearity check; prints the time ratios)
#   4  range-partitioned by finished_at, monthly partitions, primary key (id, finished_at),
#      btree on (finished_at, id); run_logs references (id, finished_at), so partitions are
#      never dropped (the cascade must run): batches
#   5  retention by partition: the layout of 4 with PART_ROWS runs (default 1,000,000), an
#      index on status, no table referencing runs and no `running` row in the older half, so every eligible
#      row lies in a monthly partition entirely older than the cutoff: the partition fast
#      path (RUNS_PARTITIONS=drop) against one DELETE of the same rows
# CASES="1 3" runs a subset. REPEAT=n (default 1) runs the cases n times over, in turn,
# each on fresh copies, and adds each case's medians (the machine is noisy: one DELETE of
# the same data varies by a third from run to run). The worker inherits the environment, so its settings can be
# compared (RUNS_PARTITION_COUNT=exact CASES=5 ...); WORKER_LOG_LEVEL (default info) sets
# its log level (debug shows each partition's proof and count). A task not finished after TIMEOUT seconds (default 300) is
# reported as such and the next case starts. Databases are named bench_runs_<pid>_* and
# dropped on exit. Run by hand, not in CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${ROWS:-1000000}
TIMEOUT=${TIMEOUT:-300}
PART_ROWS=${PART_ROWS:-1000000}
CASES=${CASES:-"1 2 3 3x 4 5"}
REPEAT=${REPEAT:-1}
MAX_AGE_HOURS=720
STATUSES="'succeeded', 'failed', 'cancelled'"
TOKEN=bench-token-0123456789abcdef
SIGNING_KEYS=bench:bench-signing-secret-0123456789abcdef
PREFIX=bench-runs-$$
DB=bench_runs_$$
WORK=${BENCH_DIR:-/var/tmp/cleanup-bench-runs-$$}
deploy/local/services.sh
. deploy/local/env.sh
PG=$BENCH_PG
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
# What was measured: the commit, and whether the Rust sources differed from it.
CODE="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain -- Cargo.lock shared producer-api worker 2>/dev/null)" ]; then
  CODE="$CODE + uncommitted changes: $(git status --porcelain -- Cargo.lock shared producer-api worker | awk '{print $2}' | tr '\n' ' ')"
fi
cargo build --release --locked -p producer-api -p worker
mkdir -p "$WORK"
RESULTS="$WORK/results.tsv"
: > "$RESULTS"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
sql() { psql -X -q -v ON_ERROR_STOP=1 "$PG/$1" "${@:2}"; }
value() { psql -X -tA -v ON_ERROR_STOP=1 "$PG/$1" -c "$2"; }
dbs=()
create_db() { # name [template]
  dbs+=("$1")
  sql postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" \
    -c "CREATE DATABASE $1${2:+ TEMPLATE $2}"
}
drop_db() { sql postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)"; }

API_PID= WORKER_PID=
stop_worker() {
  if [ -n "$WORKER_PID" ]; then kill "$WORKER_PID" 2>/dev/null || true; wait "$WORKER_PID" 2>/dev/null || true; fi
  WORKER_PID=
}
cleanup() {
  stop_worker
  if [ -n "$API_PID" ]; then kill "$API_PID" 2>/dev/null || true; wait "$API_PID" 2>/dev/null || true; fi
  for db in "${dbs[@]}"; do drop_db "$db" 2>/dev/null || true; done
  rabbitmqctl list_queues name 2>/dev/null | grep "^$PREFIX\." | xargs -r -n1 rabbitmqctl delete_queue >/dev/null 2>&1 || true
  # rabbitmqctl has no delete_exchange (rabbitmqadmin needs the management plugin): best effort.
  for x in $(rabbitmqctl list_exchanges name 2>/dev/null | grep "^$PREFIX\." || true); do
    rabbitmqctl eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$x\">>), false, <<\"bench\">>)." >/dev/null 2>&1 || true
  done
  echo "logs: $WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- data ---------------------------------------------------------------------------
# Deterministic: row g has the same id, status and age in every layout. Status: a third
# `running` (never eligible), the rest succeeded / failed / cancelled in turn.
ROW_SELECT="
  SELECT g AS id, 'run-' || g AS name,
         CASE WHEN g % 3 = 0 THEN 'running'
              ELSE (ARRAY['succeeded', 'failed', 'cancelled'])[1 + (g / 3) % 3] END AS status,
         CASE WHEN g <= :half
              THEN now() - interval '120 days' + (g - 1) * (interval '60 days' / :half)
              ELSE now() - interval '20 days' + (g - :half - 1) * (interval '19 days' / (:rows - :half))
         END AS finished_at
  FROM generate_series(1, :rows) g"

build_plain() { # db rows index(yes|no)
  create_db "$1"
  sql "$1" -f deploy/sql/runs-schema.sql
  [ "$3" = no ] && sql "$1" -c "DROP INDEX runs_finished_at_id"
  sql "$1" -v rows="$2" -v half="$(($2 / 2))" <<SQL
INSERT INTO runs (id, name, status, started_at, finished_at) OVERRIDING SYSTEM VALUE
SELECT id, name, status, finished_at - interval '10 minutes', finished_at FROM ($ROW_SELECT) r;
SELECT setval(pg_get_serial_sequence('runs', 'id'), :rows) AS last_id \\gset
INSERT INTO run_logs (run_id, line) SELECT id, 'log line of run ' || id FROM runs ORDER BY id;
VACUUM ANALYZE;
SQL
}

# Runs range-partitioned by month on finished_at (cases 4 and 5).
PARTITIONED_RUNS="
CREATE TABLE runs (
    id          bigint NOT NULL,
    name        text NOT NULL DEFAULT '',
    status      text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz NOT NULL,
    PRIMARY KEY (id, finished_at)
) PARTITION BY RANGE (finished_at);
CREATE INDEX runs_finished_at_id ON runs (finished_at, id);
DO \$\$
DECLARE m date := date_trunc('month', now() - interval '125 days');
BEGIN
  WHILE m <= now() + interval '1 month' LOOP
    EXECUTE format('CREATE TABLE %I PARTITION OF runs FOR VALUES FROM (%L) TO (%L)',
                   'runs_' || to_char(m, 'YYYY_MM'), m, m + interval '1 month');
    m := m + interval '1 month';
  END LOOP;
END \$\$;"

build_partitioned() { # db rows
  create_db "$1"
  sql "$1" -v rows="$2" -v half="$(($2 / 2))" <<SQL
$PARTITIONED_RUNS
CREATE TABLE run_logs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id          bigint NOT NULL,
    run_finished_at timestamptz NOT NULL,
    line            text NOT NULL,
    FOREIGN KEY (run_id, run_finished_at) REFERENCES runs (id, finished_at) ON DELETE CASCADE
);
CREATE INDEX run_logs_run ON run_logs (run_id, run_finished_at);
INSERT INTO runs (id, name, status, started_at, finished_at)
SELECT id, name, status, finished_at - interval '10 minutes', finished_at FROM ($ROW_SELECT) r;
INSERT INTO run_logs (run_id, run_finished_at, line)
SELECT id, finished_at, 'log line of run ' || id FROM runs ORDER BY id;
VACUUM ANALYZE;
ANALYZE runs;
SQL
}

build_retention() { # db rows
  create_db "$1"
  sql "$1" -v rows="$2" -v half="$(($2 / 2))" <<SQL
$PARTITIONED_RUNS
-- Logs exist but reference nothing: no cascade stands in the way.
CREATE TABLE run_logs (run_id bigint, line text);
-- With the index on (finished_at, id), it lets the worker prove a partition eligible
-- without reading its rows (a status outside the task's would keep the partition).
CREATE INDEX runs_status ON runs (status COLLATE "C");
-- Runs still going are all recent here.
INSERT INTO runs (id, name, status, started_at, finished_at)
SELECT id, name, CASE WHEN status = 'running' AND id <= :half THEN 'succeeded' ELSE status END,
       finished_at - interval '10 minutes', finished_at FROM ($ROW_SELECT) r;
VACUUM ANALYZE;
ANALYZE runs;
SQL
}

eligible() { value "$1" "SELECT count(*) FROM runs WHERE status IN ($STATUSES) AND finished_at < now() - interval '$MAX_AGE_HOURS hours'"; }

# ---- the API, once ---------------------------------------------------------------------
API_PORT=$(free_port)
API="http://127.0.0.1:$API_PORT"
create_db "${DB}_ledger"
DATABASE_URL="$PG/${DB}_ledger" API_TOKENS=$TOKEN TASK_SIGNING_KEYS=$SIGNING_KEYS \
  LISTEN_ADDR=127.0.0.1:$API_PORT AMQP_PREFIX=$PREFIX LOG_LEVEL=warn \
  "$TARGET_DIR/release/producer-api" > "$WORK/producer-api.log" 2>&1 &
API_PID=$!
for _ in $(seq 1 100); do curl -fsS "$API/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS "$API/readyz" >/dev/null || { echo "producer-api did not become ready; see $WORK/producer-api.log"; exit 1; }

start_worker() { # runs database, log name
  local port
  port=$(free_port)
  RUNS_DATABASE_URL="$PG/$1" METRICS_ADDR=127.0.0.1:$port TASK_SIGNING_KEYS=$SIGNING_KEYS \
    AMQP_PREFIX=$PREFIX WORKER_KINDS=cleanup_runs LOG_LEVEL=${WORKER_LOG_LEVEL:-info} \
    "$TARGET_DIR/release/worker" > "$WORK/worker-$2.log" 2>&1 &
  WORKER_PID=$!
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return; sleep 0.2; done
  echo "worker did not become ready; see $WORK/worker-$2.log"; exit 1
}

# POST the task, poll GET /tasks/{id} every 20 ms; prints one line:
# status task_id wall_s ledger_s runs_deleted batches duration_ms turns attempts strategy (or status=timeout / failed ...)
# wall_s: POST sent -> a GET saw the end (includes up to one poll interval); ledger_s: the
# task row's created_at (the enqueue's transaction) -> updated_at (the recorder's), which
# the polling does not blur.
run_task() { # body
  python3 - "$API" "$TOKEN" "$1" "$TIMEOUT" <<'PY'
import json, sys, time, urllib.request
api, token, body, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
auth = {"Authorization": f"Bearer {token}"}
req = urllib.request.Request(f"{api}/maintenance/cleanup-runs", data=body.encode(), method="POST",
                             headers={**auth, "Content-Type": "application/json"})
t0 = time.monotonic()
with urllib.request.urlopen(req) as r:
    assert r.status == 202, r.status
    task_id = json.load(r)["task_id"]
while True:
    with urllib.request.urlopen(urllib.request.Request(f"{api}/tasks/{task_id}", headers=auth)) as r:
        t = json.load(r)
    wall = time.monotonic() - t0
    if t["status"] in ("succeeded", "failed", "dead"):
        break
    if wall > timeout:
        print(f"timeout {task_id} {t['status']}")
        sys.exit(0)
    time.sleep(0.02)
res = t.get("result") or {}
from datetime import datetime
ledger = (datetime.fromisoformat(t["updated_at"]) - datetime.fromisoformat(t["created_at"])).total_seconds()
print(t["status"], task_id, f"{wall:.3f}", f"{ledger:.3f}", res.get("runs_deleted", "-"), res.get("batches", "-"),
      res.get("duration_ms", "-"), res.get("turns", "-"), t["attempts"], (res.get("strategy") or "-") + (f"+{len(res['partitions'])}_partitions" if res.get("partitions") else "") + f"_longest_{res.get('longest_batch_ms', '-')}ms",
      json.dumps(t.get("error")) if t["status"] != "succeeded" else "")
PY
}

# ---- one case ----------------------------------------------------------------------------
run_case() { # name label template batch_size
  local name=$1 label=$2 tpl=$3 batch=$4 rows ms deleted line status id wall ledger runs batches dur turns attempts strategy error left_a left_b
  echo "== case $label"
  create_db "${DB}_${name}_delete" "$tpl"
  create_db "${DB}_${name}_task" "$tpl"
  rows=$(eligible "${DB}_${name}_delete")
  sql postgres -c CHECKPOINT
  # The baseline: one statement, timed by psql (\timing: client round trip).
  line=$(psql -X -v ON_ERROR_STOP=1 "$PG/${DB}_${name}_delete" <<SQL
\timing on
DELETE FROM runs WHERE status IN ($STATUSES) AND finished_at < now() - interval '$MAX_AGE_HOURS hours';
SQL
)
  deleted=$(printf '%s\n' "$line" | sed -n 's/^DELETE \([0-9]*\)$/\1/p')
  ms=$(printf '%s\n' "$line" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')
  left_a=$(value "${DB}_${name}_delete" "SELECT (SELECT count(*) FROM runs) || '/' || (SELECT count(*) FROM run_logs)")
  echo "   one DELETE: $deleted rows in $ms ms (runs/run_logs left: $left_a)"
  drop_db "${DB}_${name}_delete"
  sql postgres -c CHECKPOINT
  start_worker "${DB}_${name}_task" "$name"
  read -r status id wall ledger runs batches dur turns attempts strategy error < <(
    run_task "{\"max_age_hours\": $MAX_AGE_HOURS${batch:+, \"batch_size\": $batch}}") || true
  if [ "$status" = succeeded ]; then
    left_b=$(value "${DB}_${name}_task" "SELECT (SELECT count(*) FROM runs) || '/' || (SELECT count(*) FROM run_logs)")
    echo "   cleanup_runs: task $id succeeded, wall ${wall}s, ledger ${ledger}s, runs_deleted $runs, batches $batches, duration_ms $dur, turns $turns, attempts $attempts, strategy $strategy (runs/run_logs left: $left_b)"
    [ "$left_a" = "$left_b" ] || echo "   !! the two copies differ afterwards: $left_a vs $left_b"
  elif [ "$status" = timeout ]; then
    echo "   cleanup_runs: task $id did not finish in $TIMEOUT s (status $wall, rows still eligible: $(eligible "${DB}_${name}_task"))"
    wall="did not finish in $TIMEOUT s" ledger=- runs=- batches=- dur=- strategy=-
  else
    echo "   cleanup_runs: task $id $status after ${wall}s: $strategy $error"
    wall="$status" ledger=- runs=- batches=- dur=- strategy=-
  fi
  stop_worker
  drop_db "${DB}_${name}_task"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$rows" "$ms" "$ledger" "$dur" "$wall" "$runs" "$batches" "$strategy" >> "$RESULTS"
}

has_case() { case " $CASES " in *" $1 "*) return 0 ;; esac; return 1; }

echo "== building templates: $ROWS runs (+ $ROWS run_logs rows)"
if has_case 1 || has_case 2; then build_plain "${DB}_tpl_indexed" "$ROWS" yes; fi
if has_case 3 || has_case 3x; then build_plain "${DB}_tpl_noindex" "$ROWS" no; fi
if has_case 3x; then build_plain "${DB}_tpl_noindex_2x" "$((2 * ROWS))" no; fi
if has_case 4; then build_partitioned "${DB}_tpl_partitioned" "$ROWS"; fi
if has_case 5; then build_retention "${DB}_tpl_retention" "$PART_ROWS"; fi

for _ in $(seq 1 "$REPEAT"); do
  has_case 1 && run_case indexed "1 indexed" "${DB}_tpl_indexed" ""
  has_case 2 && run_case indexed1k "2 indexed, batch_size 1000" "${DB}_tpl_indexed" 1000
  has_case 3 && run_case noindex "3 no index" "${DB}_tpl_noindex" ""
  has_case 3x && run_case noindex2x "3x no index, 2xROWS" "${DB}_tpl_noindex_2x" ""
  has_case 4 && run_case partitioned "4 partitioned" "${DB}_tpl_partitioned" ""
  has_case 5 && run_case retention "5 partitions dropped, PART_ROWS" "${DB}_tpl_retention" ""
done

echo
echo "ROWS=$ROWS runs (+1 run_logs row each), cutoff $MAX_AGE_HOURS h, $(nproc) cores, one worker, load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "code: $CODE"
python3 - "$RESULTS" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
def secs(x):
    try: return float(x)
    except ValueError: return None
def ratio(r):  # ledger time / one DELETE; below 1, also how many times faster
    return f"{r:.2f}x" if r >= 1 else f"{r:.2f}x ({1 / r:.1f}x faster)"
head = ["case", "rows eligible", "one DELETE", "cleanup_runs (ledger)", "cleanup_runs (duration_ms)", "(polled)", "ratio", "runs_deleted / batches / strategy"]
out = []
for label, eligible, ms, ledger, dur, wall, runs, batches, strategy in rows:
    d = secs(ms) / 1000 if secs(ms) is not None else None
    w = secs(ledger)
    out.append([label, eligible, f"{d:.2f} s" if d is not None else "-",
                f"{w:.3f} s" if w is not None else wall,
                f"{dur} ms" if dur != "-" else "-",
                f"{secs(wall):.2f} s" if secs(wall) is not None else "-",
                ratio(w / d) if w is not None and d else "-",
                f"{runs} / {batches} / {strategy}"])
widths = [max(len(r[i]) for r in out + [head]) for i in range(len(head))]
fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
print(fmt(head)); print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for r in out: print(fmt(r))
from statistics import median
groups = {}
for r in rows:
    groups.setdefault(r[0], []).append(r)
def med(group, i):
    values = [secs(r[i]) for r in group]
    return median(values) if values and None not in values else None
if any(len(g) > 1 for g in groups.values()):
    print("\nmedians per case (ratio: median and range of the rounds' ledger time / one DELETE):")
    for label, group in groups.items():
        ratios = sorted(secs(r[3]) / (secs(r[2]) / 1000) for r in group if secs(r[3]) and secs(r[2]))
        d, w, u = med(group, 2), med(group, 3), med(group, 4)
        print(f"  {label}: {len(group)} rounds, one DELETE {d / 1000:.3f} s, ledger {w:.3f} s, duration {u:.0f} ms, "
              f"ratio {ratio(median(ratios))} (range {ratio(ratios[0])} to {ratio(ratios[-1])})" if d and w and u and ratios else f"  {label}: -")
by = {label.split()[0]: group for label, group in groups.items()}
if "3" in by and "3x" in by:
    a, b = by["3"], by["3x"]
    print(f"\nlinearity, no index (rows eligible {a[0][1]} -> {b[0][1]}; 2.0 = linear; medians):")
    for name, i in (("one DELETE:           ", 2), ("cleanup_runs ledger:  ", 3), ("cleanup_runs duration:", 4)):
        x, y = med(a, i), med(b, i)
        print(f"  {name} {y / x:.2f}x" if x and y else f"  {name} -")
PY
echo "(ledger: the task's created_at (enqueue transaction) -> updated_at (the recorder's transaction that marked it succeeded): relay, RabbitMQ, worker, events and ledger included; polled: POST sent -> GET /tasks/{id} every 20 ms saw succeeded; ratio = ledger / one DELETE)"
