#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672) are running on this
# machine, starting (or, if missing, installing from Debian's packages) whichever is not,
# and that the local scripts can log in to PostgreSQL over TCP. A cluster as Debian
# installs it refuses `postgres@127.0.0.1` without a password (peer and scram-sha-256
# authentication): then a development role `cleanup_dev` is created with a random
# password, through the local socket as the `postgres` system user, and its URL is
# written to deploy/local/.pg-url (not committed), which deploy/local/env.sh reads.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

log() { printf '[services] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  log "installing $* from Debian's packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

postgres_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

ensure_postgres() {
  if postgres_up; then return; fi
  command -v pg_ctlcluster >/dev/null || apt_install postgresql postgresql-client
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 60); do
    postgres_up && return
    sleep 1
  done
  log "PostgreSQL did not come up on 127.0.0.1:5432"
  exit 1
}

pg_login_works() { psql -w -q -d "$1/postgres" -c 'SELECT 1' >/dev/null 2>&1; }

as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"
  elif [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"
  else sudo -u postgres "$@"; fi
}

ensure_postgres_login() {
  # shellcheck source=deploy/local/env.sh
  . "$here/env.sh"
  if pg_login_works "$PG_URL"; then return; fi
  if [ -s "$PG_URL_FILE" ]; then
    log "the login in $PG_URL_FILE is refused; setting it up again"
  fi
  log "PostgreSQL refuses ${PG_URL%%://*}://$(printf '%s' "${PG_URL#*://}" | sed 's/:[^@]*@/:***@/') (password or peer authentication)"
  local password url
  password=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  # Over the local socket as the postgres system user (peer authentication).
  if ! as_postgres psql -q -v ON_ERROR_STOP=1 -v pw="$password" postgres >/dev/null <<'SQL'
SELECT format('CREATE ROLE cleanup_dev LOGIN SUPERUSER PASSWORD %L', :'pw')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cleanup_dev') \gexec
SELECT format('ALTER ROLE cleanup_dev LOGIN SUPERUSER PASSWORD %L', :'pw') \gexec
SQL
  then
    log "could not create a development role as the postgres system user; set PG_URL to a URL that can create databases"
    exit 1
  fi
  url="postgres://cleanup_dev:$password@127.0.0.1:5432"
  if ! pg_login_works "$url"; then
    log "the new role cleanup_dev cannot log in over 127.0.0.1 either; check pg_hba.conf allows host connections with a password"
    exit 1
  fi
  umask 077
  printf '%s\n' "$url" > "$PG_URL_FILE"
  log "changed: created the superuser role cleanup_dev (local development only) with a random password; its URL is in $PG_URL_FILE, which the local scripts read"
}

rabbit_up() {
  # A TCP connect to the AMQP port is the cheapest reliable check.
  (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null
}

ensure_rabbitmq() {
  if rabbit_up; then return; fi
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  log "starting RabbitMQ"
  as_root rabbitmq-server -detached || true
  as_root rabbitmqctl --timeout 120 await_startup >/dev/null 2>&1 || true
  for _ in $(seq 1 120); do
    rabbit_up && return
    sleep 1
  done
  log "RabbitMQ did not come up on 127.0.0.1:5672"
  exit 1
}

ensure_postgres
ensure_postgres_login
ensure_rabbitmq
log "PostgreSQL and RabbitMQ are up"
