#!/usr/bin/env bash
# Local Prefect server (SQLite, loopback) + a process worker + one deployment per recipe.
# Open http://127.0.0.1:${PORT}/ to see deployments, start runs with parameters and watch them.
# Ctrl-C stops both.
set -euo pipefail
PORT=${PREFECT_UI_PORT:-4200}
BIN=${BIN:-.venv/bin}
export PREFECT_SERVER_API_HOST=127.0.0.1 PREFECT_SERVER_API_PORT=$PORT
export PREFECT_API_URL=http://127.0.0.1:$PORT/api PREFECT_SERVER_ANALYTICS_ENABLED=false
"$BIN/prefect" server start > "${TMPDIR:-/tmp}/feinschliff-prefect-server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 60); do
  if curl -fs "$PREFECT_API_URL/health" >/dev/null; then break; fi
  sleep 1
done
"$BIN/prefect" work-pool create local --type process >/dev/null 2>&1 || true
"$BIN/feinschliff" deployments sync recipes/*.yaml --pool local --paused
echo "Prefect UI: http://127.0.0.1:$PORT/deployments  (worker running; Ctrl-C to stop)"
"$BIN/prefect" worker start --pool local
