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
# A venv interrupted while being created has bin/python but no pip: build it again.
"$VENV/bin/python" -m pip --version >/dev/null 2>&1 || "$PYTHON" -m venv --clear "$VENV"
# requirements.lock pins the CPU build torch==2.13.0+cpu, which PyPI does not host: pip must
# find it through its find-links (pip config or PIP_FIND_LINKS), as on the CI machines.
if ! "$VENV/bin/python" -m pip install -q --dry-run --no-deps "torch==2.13.0+cpu" >/dev/null 2>&1; then
  echo "no torch 2.13.0+cpu wheel for pip (PyPI has none). Fetch it once and point pip at it:" \
    "pip download --no-deps --index-url https://download.pytorch.org/whl/cpu" \
    "torch==2.13.0 -d ~/wheels && pip config set global.find-links ~/wheels" >&2
  exit 1
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check uv==0.13.9 "torch==2.13.0"
# uv ignores pip's config: hand it pip's find-links (the local torch wheel) if there is one.
links=$("$VENV/bin/python" -m pip config get global.find-links 2>/dev/null || true)
args=()
for l in $links; do args+=(--find-links "$l"); done
"$VENV/bin/uv" pip install --python "$VENV/bin/python" "${args[@]}" -r requirements.lock
"$VENV/bin/uv" pip install --python "$VENV/bin/python" --no-deps -e .
echo "installed into $VENV"
