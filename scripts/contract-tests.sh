#!/usr/bin/env bash
# The contract checks, seen from outside Rust (run by scripts/test.sh after
# the service binaries are built; RabbitMQ must be up):
#   - docs/asyncapi.yaml validated by the AsyncAPI project's own parser;
#   - both services' /openapi.json validated (openapi-spec-validator) and
#     fuzzed with schemathesis (bounded, seeded);
#   - a Python (pika) client that knows only docs/asyncapi.yaml drives a
#     fulfillment end to end against a running fulfillment-service.
# Installs what it needs when missing: python3 and node from apt, Python
# packages into .venv from PyPI (tests/python/requirements.txt), the
# AsyncAPI parser from npm (tests/python/asyncapi/package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
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

asyncapi=tests/python/asyncapi
if [[ ! -f $asyncapi/node_modules/.package-lock.json || $asyncapi/package-lock.json -nt $asyncapi/node_modules/.package-lock.json ]]; then
  log "installing the AsyncAPI parser (npm ci)"
  (cd "$asyncapi" && npm ci --no-audit --no-fund --loglevel=error)
fi

log "docs/asyncapi.yaml: the AsyncAPI parser"
node "$asyncapi/validate.mjs" docs/asyncapi.yaml

log "OpenAPI (openapi-spec-validator, schemathesis) and the Python AsyncAPI client (pytest)"
"$venv/bin/python" -m pytest tests/python -q -p no:cacheprovider
