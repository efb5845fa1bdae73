#!/usr/bin/env bash
# Build the separate Axolotl venv that `train.backend: axolotl` runs in, and print its path.
#
# Axolotl 0.19.0 (the newest for Python 3.11) pins transformers/trl/peft/datasets versions that
# conflict with feinschliff's own venv, so it lives in its own venv under the cache dir, keyed by
# its pins: $FEINSCHLIFF_HOME/venvs/axolotl-<sha of the pins>/ (~5 min, ~4.3 GB). A completeness
# marker is written last; a finished venv is reused, an interrupted one is rebuilt.
# torch goes in first and pinned, so pip takes the local CPU wheel from its find-links instead of
# a multi-GB CUDA build.
#   scripts/install_axolotl.sh            # build (or reuse) and print the venv path
#   scripts/install_axolotl.sh --print    # only print the path it would use
set -euo pipefail
PYTHON=${PYTHON:-python3.11}
AXOLOTL_PINS=${AXOLOTL_PINS:-"axolotl==0.19.0 torch==2.13.0"}
HOME_DIR=${FEINSCHLIFF_HOME:-$HOME/.cache/feinschliff}
# Every package is pinned by a constraints file (a pip freeze of a working venv), so a fresh
# machine does not re-resolve ~240 dependencies to their newest releases; its hash is part of
# the venv's name. Regenerate after changing a pin: build, then
#   "$VENV/bin/python" -m pip freeze >> scripts/axolotl-constraints.txt (below its comment lines)
CONSTRAINTS="$(cd "$(dirname "$0")" && pwd)/axolotl-constraints.txt"
KEY=$(printf '%s python3.11 %s' "$AXOLOTL_PINS" "$(sha256sum "$CONSTRAINTS" | cut -c1-12)" \
  | sha256sum | cut -c1-12)
VENV="$HOME_DIR/venvs/axolotl-$KEY"
if [ "${1:-}" = "--print" ]; then echo "$VENV"; exit 0; fi
if [ -f "$VENV/.complete" ]; then echo "$VENV"; exit 0; fi
# one build at a time (two test sessions, make + a training): the second waits, then reuses it
mkdir -p "$(dirname "$VENV")"
exec 9>"$(dirname "$VENV")/.axolotl-$KEY.lock"
flock 9
if [ -f "$VENV/.complete" ]; then echo "$VENV"; exit 0; fi
command -v "$PYTHON" >/dev/null || { echo "needs $PYTHON" >&2; exit 1; }
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "axolotl 0.19.0 needs Python 3.11 (found $("$PYTHON" --version))" >&2; exit 1; }
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
pip_() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS" "$@"; }
read -r -a pins <<<"$AXOLOTL_PINS"
torch_pin=""
for p in "${pins[@]}"; do case "$p" in torch==*) torch_pin=$p ;; esac; done
[ -n "$torch_pin" ] && pip_ "$torch_pin"
pip_ "${pins[@]}" >&2
"$VENV/bin/python" -c 'import axolotl.utils.config' >&2
printf '%s\n' "$AXOLOTL_PINS" >"$VENV/.complete"
echo "$VENV"
