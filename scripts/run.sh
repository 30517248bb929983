#!/usr/bin/env bash
# The run command: makes sure RabbitMQ is up, builds and starts both
# services, places the original demo order and follows it until it ships.
# The services keep running until Ctrl-C.
#
# Settings are the services' own environment variables (see README.md),
# e.g.  STEP_DELAY_MS=10000 ./scripts/run.sh   for time to pause by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

scripts/rabbitmq.sh

log "building (release)"
cargo build --release --locked -p order-service -p fulfillment-service

mkdir -p data/logs
pids=()
stop() {
  log "stopping the services"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

ORDER_ADDR="${ORDER_HTTP_ADDR:-127.0.0.1:3232}"
FULFILLMENT_ADDR="${FULFILLMENT_HTTP_ADDR:-127.0.0.1:3233}"

HTTP_ADDR="$FULFILLMENT_ADDR" ./target/release/fulfillment-service >>data/logs/fulfillment-service.log 2>&1 &
pids+=($!)
HTTP_ADDR="$ORDER_ADDR" ./target/release/order-service >>data/logs/order-service.log 2>&1 &
pids+=($!)

for url in "http://$FULFILLMENT_ADDR/readyz" "http://$ORDER_ADDR/readyz"; do
  for _ in $(seq 1 100); do
    curl -fsS "$url" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fsS "$url" >/dev/null || { log "$url is not ready; see data/logs/"; exit 1; }
done
log "order-service       http://$ORDER_ADDR        (logs: data/logs/order-service.log)"
log "fulfillment-service http://$FULFILLMENT_ADDR  (logs: data/logs/fulfillment-service.log)"
log "RabbitMQ console    http://127.0.0.1:15672  (guest/guest)"

if [ "${DEMO:-1}" != "0" ]; then
  log "placing the demo order: curl -X POST http://$ORDER_ADDR/orders/demo"
  created=$(curl -fsS -X POST "http://$ORDER_ADDR/orders/demo")
  echo "$created"
  workflow=$(printf '%s' "$created" | sed -n 's/.*"workflowId":"\([^"]*\)".*/\1/p')
  log "following $workflow (Ctrl-C stops the services)"
  last=""
  while :; do
    status=$(curl -fsS "http://$ORDER_ADDR/orders/$workflow/status" || true)
    line=$(printf '%s' "$status" | sed -n 's/.*"status":"\([A-Z_]*\)".*/\1/p')
    fstatus=$(printf '%s' "$status" | sed -n 's/.*"fulfillmentStatus":"\([A-Z_]*\)".*/\1/p')
    now="order ${line:-?}${fstatus:+, fulfillment $fstatus}"
    if [ "$now" != "$last" ]; then
      printf '%s  %s\n' "$(date +%T)" "$now"
      last="$now"
    fi
    case "$line" in SHIPPED|CANCELLED|FAILED) break ;; esac
    sleep 1
  done
  echo "$status"
  log "the demo order is $line; try the curl walkthrough in README.md"
fi

log "services running; Ctrl-C to stop"
wait
