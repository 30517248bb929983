#!/bin/sh
# Container HEALTHCHECK: liveness only (/healthz never looks at the broker,
# so a RabbitMQ outage does not get the container restarted). The port comes
# from HTTP_ADDR, else the service's default.
set -eu
port="${HTTP_ADDR:-}"
port="${port##*:}"
if [ -z "$port" ]; then
    case "${SERVICE:-}" in
        order-service) port=3232 ;;
        fulfillment-service) port=3233 ;;
        *) echo "healthcheck: set HTTP_ADDR" >&2; exit 1 ;;
    esac
fi
exec curl --fail --silent --show-error --max-time 2 --output /dev/null "http://127.0.0.1:${port}/healthz"
