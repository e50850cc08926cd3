#!/usr/bin/env bash
# One-shot compose service: registers the Debezium PostgreSQL connector with
# Kafka Connect and waits until the connector and its task are RUNNING.
# The compose twin of register_connector in scripts/stack.
#
#   CONNECT_URL       Kafka Connect REST API (default http://connect:8083)
#   CONNECTOR_NAME    connector name (default shop-postgres)
#   CONNECTOR_CONFIG  connector config JSON (default /deploy/debezium-postgres.json)
#   REGISTER_TIMEOUT  seconds to wait for RUNNING (default 120)
set -euo pipefail

url=${CONNECT_URL:-http://connect:8083}
name=${CONNECTOR_NAME:-shop-postgres}
config=${CONNECTOR_CONFIG:-/deploy/debezium-postgres.json}
timeout=${REGISTER_TIMEOUT:-120}

say() { printf '[register-connector] %s\n' "$*" >&2; }

[[ -r "$config" ]] || { say "error: connector config $config is not readable"; exit 1; }

# PUT on /config creates or updates: running this service twice is harmless.
answer_file=$(mktemp)
code=$(curl -sS -o "$answer_file" -w '%{http_code}' -X PUT \
  -H 'Content-Type: application/json' --data @"$config" \
  "$url/connectors/$name/config") || code=000
case "$code" in
  200 | 201) say "connector $name registered (HTTP $code)" ;;
  *)
    say "error: registering connector $name answered HTTP $code: $(head -c 600 "$answer_file")"
    exit 1
    ;;
esac

deadline=$((SECONDS + timeout))
while :; do
  status=$(curl -sf "$url/connectors/$name/status" || true)
  if grep -q '"state":"FAILED"' <<<"$status"; then
    say "error: connector $name FAILED: $(head -c 1200 <<<"$status")"
    exit 1
  fi
  # One RUNNING for the connector and one for its task (tasks.max = 1).
  if [[ $(grep -o '"state":"RUNNING"' <<<"$status" | wc -l) -ge 2 ]]; then
    say "connector $name and its task are RUNNING"
    exit 0
  fi
  if ((SECONDS >= deadline)); then
    say "error: connector $name was not RUNNING within ${timeout}s; last status: ${status:-none}"
    exit 1
  fi
  sleep 1
done
