#!/usr/bin/env bash
# Fuzz producer-api against its own OpenAPI document: `schemathesis run --checks all`
# (every status and content type the server answers must be listed, every response must
# match its schema, data the schema allows must be accepted and data it forbids refused).
#
# Uses the debug binary `cargo build -p producer-api` made ($TARGET_DIR/debug/producer-api),
# installs the pinned schemathesis (deploy/checks/schemathesis-requirements.txt, PyPI) into
# a venv under the cargo target directory, runs the API on a free port against a scratch
# ledger database and its own AMQP prefix, and removes the database, the queues and the
# exchanges when it ends, whatever happened. Exit code 0 when schemathesis finds nothing.
#
# SCHEMATHESIS_MAX_EXAMPLES (default 40) bounds the cases per operation and phase;
# SCHEMATHESIS_SEED replays a run (the seed is printed).
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/env.sh

PG=${CHECK_PG:-$PG_URL}
AMQP=${CHECK_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}
BINARY=$TARGET_DIR/debug/producer-api
REQUIREMENTS=deploy/checks/schemathesis-requirements.txt
VENV=$TARGET_DIR/schemathesis-venv
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-40}
SEED=${SCHEMATHESIS_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
TOKEN=schemathesis-check-token-0123456789

log() { printf '[schemathesis] %s\n' "$*" >&2; }

[ -x "$BINARY" ] || { log "$BINARY is missing: run \`cargo build -p producer-api\` first"; exit 1; }

# The venv is rebuilt whenever the pinned requirements change.
if ! cmp -s "$REQUIREMENTS" "$VENV/requirements.txt" 2>/dev/null; then
  log "installing $(grep -m1 '^schemathesis==' "$REQUIREMENTS") into $VENV"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian's python3 makes venvs only with its python3-venv package.
    log "installing python3-venv from Debian's packages"
    as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$VENV"
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQUIREMENTS"
  cp "$REQUIREMENTS" "$VENV/requirements.txt"
fi

suffix=$(od -An -N5 -tx1 /dev/urandom | tr -d ' \n')
DB=schemathesis_$suffix
PREFIX=st$suffix
WORK=$(mktemp -d /tmp/cleanup-schemathesis.XXXXXX)
API_PID=

cleanup() {
  local status=$?
  if [ -n "$API_PID" ]; then
    kill "$API_PID" 2>/dev/null || true
    wait "$API_PID" 2>/dev/null || true
  fi
  psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  if command -v rabbitmqctl >/dev/null; then
    for queue in $(rabbitmqctl -q list_queues name 2>/dev/null | grep "^$PREFIX\." || true); do
      rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true
    done
    # rabbitmqctl has no command for exchanges; the broker's own function does it.
    for exchange in $(rabbitmqctl -q list_exchanges name 2>/dev/null | grep "^$PREFIX\." || true); do
      rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$exchange\">>), false, <<\"schemathesis-check\">>)." \
        >/dev/null 2>&1 || true
    done
  fi
  if [ "$status" -ne 0 ] && [ -s "$WORK/producer-api.log" ]; then
    log "producer-api's log (last lines):"
    tail -n 40 "$WORK/producer-api.log" >&2
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

psql -q -v ON_ERROR_STOP=1 "$PG/postgres" -c "CREATE DATABASE \"$DB\"" >/dev/null
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
API=http://127.0.0.1:$PORT
# A floor and an attempts limit other than the defaults, and a scope column: the document
# the API serves states this deployment's rules, and schemathesis holds it to them.
DATABASE_URL="$PG/$DB" API_TOKENS=$TOKEN LISTEN_ADDR=127.0.0.1:$PORT \
  AMQP_URL=$AMQP AMQP_PREFIX=$PREFIX TASK_SIGNING_KEYS=schemathesis:schemathesis-check-signing-secret-0123456789 \
  MIN_AGE_HOURS=6 MAX_ATTEMPTS_LIMIT=5 RUNS_SCOPE_COLUMNS=project_id LOG_LEVEL=warn \
  "$BINARY" > "$WORK/producer-api.log" 2>&1 &
API_PID=$!
for _ in $(seq 1 120); do
  curl -fsS "$API/readyz" >/dev/null 2>&1 && break
  kill -0 "$API_PID" 2>/dev/null || { log "producer-api exited"; exit 1; }
  sleep 0.5
done
curl -fsS "$API/readyz" >/dev/null || { log "producer-api did not become ready"; exit 1; }

log "producer-api on $API (ledger $DB, AMQP prefix $PREFIX); $MAX_EXAMPLES examples per operation, seed $SEED"
HOOKS_DIR=$(pwd)/deploy/checks
cd "$WORK"  # schemathesis writes its report directory into the working directory
PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=$HOOKS_DIR SCHEMATHESIS_HOOKS=schemathesis_hooks "$VENV/bin/schemathesis" --config-file "$HOOKS_DIR/schemathesis.toml" run "$API/openapi.json" \
  --checks all \
  --header "Authorization: Bearer $TOKEN" \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$SEED" \
  --generation-database none \
  --request-timeout 10 \
  --no-color
