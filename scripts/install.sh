#!/usr/bin/env bash
# Create the project venv from requirements.lock. Idempotent: reruns only add what is missing.
# torch is installed first and pinned (2.13.0): pip takes the local CPU wheel where one is
# configured; a bare `torch` would pull a multi-GB CUDA build.
set -euo pipefail
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "feinschliff needs Python 3.11 (found $("$PYTHON" --version))" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check uv==0.13.9 "torch==2.13.0"
# uv ignores pip's config: hand it pip's find-links (the local torch wheel) if there is one.
links=$("$VENV/bin/python" -m pip config get global.find-links 2>/dev/null || true)
args=()
for l in $links; do args+=(--find-links "$l"); done
"$VENV/bin/uv" pip install --python "$VENV/bin/python" "${args[@]}" -r requirements.lock
"$VENV/bin/uv" pip install --python "$VENV/bin/python" --no-deps -e .
echo "installed into $VENV"
