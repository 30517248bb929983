#!/usr/bin/env bash
# The test command: starts what the tests need, then checks formatting,
# lints, builds the service binaries, runs every test against the real
# broker, and validates the deploy manifests.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

scripts/rabbitmq.sh
scripts/postgres.sh
# The three-node cluster of the high-availability tests (tests/it/ha.rs),
# beside the broker on 5672: AMQP 5701-5703, management 15701-15703.
scripts/rabbitmq-cluster.sh start

# Headless Chromium renders each service's page in the system tests
# (tests/it/operations.rs); Debian's package, installed when missing.
if ! command -v chromium >/dev/null 2>&1; then
  log "Chromium is not installed; installing it with apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
fi

# The openssl command makes the TLS tests' certificate authority
# (tests/src/tls.rs).
if ! command -v openssl >/dev/null 2>&1; then
  log "openssl is not installed; installing it with apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends openssl >/dev/null
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "building the service binaries the system tests run"
cargo build --workspace --bins --locked

log "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

log "contracts: AsyncAPI document, OpenAPI documents, the Python client"
scripts/contract-tests.sh

log "deploy manifests"
bash deploy/validate.sh
