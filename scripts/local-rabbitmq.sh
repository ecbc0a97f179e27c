#!/usr/bin/env bash
# Start, stop or query the controller's local RabbitMQ (tests and CI; no systemd needed): start|stop|status.
set -euo pipefail

LOG=${LOCAL_RABBITMQ_LOG:-/tmp/local-rabbitmq.log}
WAIT=${LOCAL_RABBITMQ_WAIT:-60}
# AMQP on loopback only: this broker is for tests, never for the fleet.
export RABBITMQ_NODE_IP_ADDRESS=${RABBITMQ_NODE_IP_ADDRESS:-127.0.0.1}

usage() { echo "usage: $0 start|stop|status" >&2; exit 2; }

require() {
  command -v rabbitmq-server >/dev/null 2>&1 || PATH=$PATH:/usr/sbin
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "error: rabbitmq-server is not installed (make setup installs it)" >&2
    exit 2
  fi
}

running() { rabbitmqctl -q status >/dev/null 2>&1; }

start() {
  if running; then echo "rabbitmq: already running"; return 0; fi
  echo "rabbitmq: starting (log: $LOG)"
  setsid rabbitmq-server >"$LOG" 2>&1 < /dev/null &
  # await_startup fails fast while the node is not yet registered; retry until WAIT.
  local deadline=$((SECONDS + WAIT))
  until rabbitmqctl -q await_startup --timeout 10 >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "error: rabbitmq did not start within ${WAIT}s; see $LOG" >&2
      exit 1
    fi
    sleep 1
  done
  echo "rabbitmq: running"
}

stop() {
  if ! running; then echo "rabbitmq: not running"; return 0; fi
  rabbitmqctl -q stop >/dev/null
  echo "rabbitmq: stopped"
}

status() {
  if running; then echo "rabbitmq: running"; else echo "rabbitmq: not running"; return 3; fi
}

[ $# -eq 1 ] || usage
require
case "$1" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) usage ;;
esac
