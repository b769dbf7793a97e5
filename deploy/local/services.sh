#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672) are running on this
# machine, starting (or, if missing, installing from Debian's packages) whichever is not.
set -euo pipefail

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
ensure_rabbitmq
log "PostgreSQL and RabbitMQ are up"
