#!/usr/bin/env bash
# The test command: starts what the tests need, then checks formatting,
# lints, builds the service binaries, runs every test against the real
# broker, and validates the deploy manifests.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

scripts/rabbitmq.sh
scripts/postgres.sh

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

log "deploy manifests"
bash deploy/validate.sh
