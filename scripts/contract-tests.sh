#!/usr/bin/env bash
# The contract checks, seen from outside Rust (run by scripts/test.sh after
# the service binaries are built; RabbitMQ must be up): both services'
# /openapi.json validated (openapi-spec-validator) and fuzzed with
# schemathesis (bounded, seeded).
# Installs what it needs when missing: python3 from apt, Python packages
# into .venv from PyPI (tests/python/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
  log "installing ${missing[*]} with apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

venv=.venv
if [[ ! -x $venv/bin/python ]]; then
  log "creating the Python environment in $venv"
  python3 -m venv "$venv"
fi
# pip is quick when everything is already installed at the pinned versions.
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt

log "OpenAPI (openapi-spec-validator, schemathesis)"
"$venv/bin/python" -m pytest tests/python -q -p no:cacheprovider
