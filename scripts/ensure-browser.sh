#!/usr/bin/env bash
# Installs Debian's Chromium when it is missing: the student page's browser test drives it
# (never a browser build downloaded by a test tool).
set -euo pipefail

if [ ! -x /usr/bin/chromium ]; then
  echo "ensure-browser: installing Chromium"
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
