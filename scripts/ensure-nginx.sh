#!/usr/bin/env bash
# Installs Debian's nginx (its light build: the proxy needs nothing more) when it is missing:
# the benchmark's scale-out scenario puts the stream nodes behind it. The bench runs its own
# nginx with a config of its own, so the package's service is neither needed nor started.
set -euo pipefail

if [ ! -x /usr/sbin/nginx ]; then
  echo "ensure-nginx: installing nginx-light"
  apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null
fi
