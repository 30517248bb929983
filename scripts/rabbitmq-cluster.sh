#!/usr/bin/env bash
# A local three-node RabbitMQ cluster beside the machine's broker (which
# keeps 5672/15672), for the high-availability tests and drills.
#
#   scripts/rabbitmq-cluster.sh start           start the nodes that are down, join them (idempotent)
#   scripts/rabbitmq-cluster.sh stop            stop all three nodes
#   scripts/rabbitmq-cluster.sh kill NODE       kill -9 one node (NODE: 1, 2, 3 or ha1@localhost ...)
#   scripts/rabbitmq-cluster.sh start-node NODE start one node again; it rejoins by itself
#   scripts/rabbitmq-cluster.sh status          which nodes run, and the cluster as node 1 sees it
#   scripts/rabbitmq-cluster.sh delete-queue VHOST QUEUE
#                                               delete a queue through a running node, even one
#                                               exclusive to a connection (the management API refuses those)
#
# Node i (1..3) is `ha<i>@localhost`: AMQP on 570<i>, management API on
# 1570<i> (guest/guest), inter-node traffic on 2570<i>, data and logs under
# $RABBITMQ_CLUSTER_DIR/ha<i> (default /var/lib/rabbitmq-cluster), owned by
# the `rabbitmq` user that Debian's wrapper runs the node as.
set -euo pipefail

BASE=${RABBITMQ_CLUSTER_DIR:-/var/lib/rabbitmq-cluster}
NODES=(1 2 3)

log() { printf '==> %s\n' "$*" >&2; }

node_name() { printf 'ha%s@localhost' "$1"; }
amqp_port() { printf '570%s' "$1"; }
management_port() { printf '1570%s' "$1"; }
dist_port() { printf '2570%s' "$1"; }

# Accepts 1, ha1 or ha1@localhost.
node_index() {
  local n=${1%@localhost}
  n=${n#ha}
  case $n in
    1 | 2 | 3) printf '%s' "$n" ;;
    *) log "unknown node '$1' (use 1, 2 or 3)"; exit 2 ;;
  esac
}

ctl() { local i=$1; shift; rabbitmqctl -q -n "$(node_name "$i")" "$@"; }

running() { ctl "$1" status >/dev/null 2>&1; }

amqp_up() { (exec 3<>/dev/tcp/127.0.0.1/"$(amqp_port "$1")") 2>/dev/null; }

install_rabbitmq() {
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    log "RabbitMQ is not installed; installing it with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq rabbitmq-server curl >/dev/null
  fi
}

prepare() {
  local i=$1 dir="$BASE/ha$1"
  mkdir -p "$dir/mnesia" "$dir/log"
  cat >"$dir/rabbitmq.conf" <<EOF
loopback_users = none
log.console = false
log.file.level = info
collect_statistics_interval = 500
EOF
  echo '[rabbitmq_management].' >"$dir/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$dir"
}

launch() {
  local i=$1 dir="$BASE/ha$1"
  prepare "$i"
  RABBITMQ_NODENAME=$(node_name "$i") \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT=$(amqp_port "$i") \
    RABBITMQ_DIST_PORT=$(dist_port "$i") \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_PID_FILE="$dir/pid" \
    RABBITMQ_SERVER_START_ARGS="-rabbitmq_management tcp_config [{port,$(management_port "$i")}]" \
    rabbitmq-server -detached >/dev/null 2>&1 || true
}

await_node() {
  local i=$1
  for _ in $(seq 1 60); do
    if ctl "$i" await_startup --timeout 5 >/dev/null 2>&1 && amqp_up "$i"; then
      return 0
    fi
    sleep 1
  done
  log "node $(node_name "$i") did not start; logs in $BASE/ha$i/log"
  return 1
}

# True when node i lists node 1 among its running nodes.
joined() {
  ctl "$1" cluster_status --formatter json 2>/dev/null |
    grep -q "\"$(node_name 1)\""
}

start_all() {
  install_rabbitmq
  for i in "${NODES[@]}"; do
    running "$i" || { log "starting $(node_name "$i")"; launch "$i"; }
  done
  for i in "${NODES[@]}"; do await_node "$i"; done
  for i in 2 3; do
    if ! joined "$i"; then
      log "joining $(node_name "$i") to $(node_name 1)"
      ctl "$i" stop_app
      ctl "$i" join_cluster "$(node_name 1)"
      ctl "$i" start_app
      await_node "$i"
    fi
  done
  for i in "${NODES[@]}"; do
    for _ in $(seq 1 60); do
      curl -fsS -u guest:guest "http://127.0.0.1:$(management_port "$i")/api/overview" >/dev/null 2>&1 && break
      sleep 1
    done
  done
  log "RabbitMQ cluster is up: AMQP 127.0.0.1:5701-5703, management 15701-15703 (guest/guest)"
}

kill_node() {
  local i=$1 pid
  pid=$(cat "$BASE/ha$i/pid" 2>/dev/null || true)
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
    log "$(node_name "$i") is not running"
    return 0
  fi
  kill -9 "$pid"
  log "killed $(node_name "$i") (pid $pid)"
}

case ${1:-} in
  start) start_all ;;
  stop)
    for i in "${NODES[@]}"; do
      running "$i" && ctl "$i" stop >/dev/null 2>&1 || true
    done
    log "cluster stopped"
    ;;
  kill) kill_node "$(node_index "${2:?node}")" ;;
  start-node)
    i=$(node_index "${2:?node}")
    running "$i" || launch "$i"
    await_node "$i"
    log "$(node_name "$i") is up"
    ;;
  delete-queue)
    vhost=${2:?vhost}
    queue=${3:?queue}
    for i in "${NODES[@]}"; do
      if running "$i"; then
        ctl "$i" delete_queue --vhost "$vhost" "$queue" >/dev/null
        exit 0
      fi
    done
    log "no node is running"
    exit 1
    ;;
  status)
    for i in "${NODES[@]}"; do
      if running "$i"; then state=running; else state=down; fi
      printf '%s\t%s\tamqp %s\tmanagement %s\n' "$(node_name "$i")" "$state" "$(amqp_port "$i")" "$(management_port "$i")"
    done
    for i in "${NODES[@]}"; do
      running "$i" && { ctl "$i" cluster_status; break; }
    done
    ;;
  *)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
