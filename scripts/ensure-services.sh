#!/usr/bin/env bash
# Starts the local Postgres and RabbitMQ when they are not answering, enables RabbitMQ's
# management UI (operators and the tests use its HTTP API), and waits until both answer.
set -euo pipefail

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # port name seconds
  for _ in $(seq "$3"); do answers "$1" && return 0; sleep 1; done
  echo "ensure-services: $2 does not answer on 127.0.0.1:$1" >&2
  exit 1
}

if ! answers 5432; then
  echo "ensure-services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
if ! answers 5672; then
  echo "ensure-services: starting RabbitMQ"
  rabbitmq-server -detached
fi
wait_for 5432 PostgreSQL 60
wait_for 5672 RabbitMQ 120

if ! answers 15672; then
  echo "ensure-services: enabling the RabbitMQ management UI"
  rabbitmq-plugins enable --quiet rabbitmq_management >/dev/null
  wait_for 15672 "RabbitMQ management" 60
fi
