#!/usr/bin/env bash
# Run the whole test suite against the local PostgreSQL and RabbitMQ (started if stopped).
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/services.sh
cargo test --workspace --locked "$@"
