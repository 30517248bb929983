#!/usr/bin/env bash
# Makes sure a local PostgreSQL answers on 127.0.0.1:5432 for the tests:
# installs it with apt when missing, starts the cluster when stopped, and
# lets the local `postgres` user in over TCP without a password (trust),
# which is what the tests' default TEST_POSTGRES_URL expects.
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; }

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  log "PostgreSQL is not installed; installing it with apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
fi

version="$(ls /etc/postgresql | sort -V | tail -n 1)"
if [ -z "$version" ]; then
  log "no PostgreSQL cluster under /etc/postgresql"
  exit 1
fi

hba="/etc/postgresql/$version/main/pg_hba.conf"
if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
  log "trusting local TCP connections in $hba (test machine only)"
  sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  if pg_up; then
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  fi
fi

if ! pg_up; then
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
fi

for _ in $(seq 1 30); do
  if pg_up; then
    log "PostgreSQL is up (127.0.0.1:5432, user postgres)"
    exit 0
  fi
  sleep 1
done
log "PostgreSQL does not answer on 127.0.0.1:5432"
exit 1
