#!/usr/bin/env bash
# System packages the test suite needs beyond Python: Debian's chromium for the Prefect UI
# screenshot test. Idempotent; needs root (CI runs as root) or an existing chromium.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "chromium is missing and this is not root: install Debian's chromium package" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "installed $(chromium --version)"
