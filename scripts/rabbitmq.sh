#!/usr/bin/env bash
# Makes sure a local RabbitMQ is running with the management plugin:
# installs it with apt when missing, starts it when stopped, waits until
# both AMQP (5672) and the management API (15672) answer.
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }

amqp_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
management_up() { curl -fsS -u guest:guest http://127.0.0.1:15672/api/overview >/dev/null 2>&1; }

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  log "RabbitMQ is not installed; installing it with apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq rabbitmq-server curl >/dev/null
fi

if ! rabbitmqctl -q status >/dev/null 2>&1; then
  log "starting RabbitMQ"
  rabbitmq-server -detached
fi

for _ in $(seq 1 60); do
  rabbitmqctl -q await_startup >/dev/null 2>&1 && break
  sleep 2
done
rabbitmqctl -q await_startup >/dev/null || { log "RabbitMQ did not start"; exit 1; }

if ! rabbitmq-plugins -q is_enabled rabbitmq_management >/dev/null 2>&1; then
  log "enabling the management plugin"
  rabbitmq-plugins -q enable rabbitmq_management >/dev/null
fi

# The management API refreshes queue and connection statistics every 5 s by
# default; tests that read them wait less with a shorter interval.
rabbitmqctl -q eval 'application:set_env(rabbit, collect_statistics_interval, 500).' >/dev/null || true

for _ in $(seq 1 60); do
  if amqp_up && management_up; then
    log "RabbitMQ is up (AMQP 127.0.0.1:5672, console http://127.0.0.1:15672 guest/guest)"
    exit 0
  fi
  sleep 1
done
log "RabbitMQ answers neither AMQP on 5672 nor the management API on 15672"
exit 1
