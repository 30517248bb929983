#!/usr/bin/env bash
# The contract checks, seen from outside Rust (run by scripts/test.sh after
# the service binaries are built; RabbitMQ must be up):
#   - docs/asyncapi.yaml validated by the AsyncAPI project's own parser;
#   - both services' /openapi.json validated (openapi-spec-validator) and
#     fuzzed with schemathesis (bounded, seeded);
#   - a Python (pika) client that knows only docs/asyncapi.yaml drives a
#     fulfillment end to end against a running fulfillment-service.
# Installs what it needs when missing: python3 and node from apt, Python
# packages from PyPI (tests/python/requirements.txt) and the AsyncAPI
# parser from npm (tests/python/asyncapi/package-lock.json), both into
# $CONTRACT_TOOLS_DIR (default ~/.cache/orders-contract-tools).
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

# Tools live outside the work tree (as deploy/validate.sh keeps its own),
# reinstalled only when their pinned versions change.
tools="${CONTRACT_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/orders-contract-tools}"
venv="$tools/venv"
stamp="$venv/.requirements"
if [[ ! -x $venv/bin/python ]] || ! cmp -s tests/python/requirements.txt "$stamp"; then
  log "installing tests/python/requirements.txt into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt
  cp tests/python/requirements.txt "$stamp"
fi

parser="$tools/asyncapi"
if ! cmp -s tests/python/asyncapi/package-lock.json "$parser/.installed"; then
  log "installing the AsyncAPI parser into $parser (npm ci)"
  mkdir -p "$parser"
  cp tests/python/asyncapi/package.json tests/python/asyncapi/package-lock.json "$parser/"
  (cd "$parser" && npm ci --no-audit --no-fund --loglevel=error)
  cp tests/python/asyncapi/package-lock.json "$parser/.installed"
fi
# Beside its node_modules, where Node resolves the parser from.
cp tests/python/asyncapi/validate.mjs "$parser/"

log "docs/asyncapi.yaml: the AsyncAPI parser"
node "$parser/validate.mjs" docs/asyncapi.yaml

log "OpenAPI (openapi-spec-validator, schemathesis) and the Python AsyncAPI client (pytest)"
"$venv/bin/python" -m pytest tests/python -q -p no:cacheprovider
