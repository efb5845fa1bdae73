"""`launcher: accelerate`: the launcher child dies with the stage process (no accelerate run)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from feinschliff.recipe_loader import load_recipe
from feinschliff.train import launch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_accelerate_launch_dies_with_the_stage_process(tmp_path, monkeypatch):
    """As the Axolotl child does: a stage killed with SIGKILL must not leave `accelerate
    launch` training on, racing its rerun for the checkpoint folder."""
    recipe = load_recipe(
        ROOT / "recipes" / "demo-de.yaml", ["train.launcher=accelerate", "train.num_processes=2"]
    )
    seen = {}

    def run(cmd, **kwargs):
        seen.update(kwargs)
        (tmp_path / "backend-metrics.json").write_text(json.dumps({"global_step": 1}))
        return subprocess.CompletedProcess(cmd, 0)

    real_run = subprocess.run
    monkeypatch.setattr(launch.subprocess, "run", run)  # no accelerate run: only its hook
    metrics = launch.launch_accelerate(recipe, "m", {"train": tmp_path / "t.jsonl"}, tmp_path)
    assert metrics["global_step"] == 1
    hook = seen.get("preexec_fn")
    assert hook is not None
    # the hook, in a real child: the kernel will SIGKILL it when this process dies
    probe = (
        "import ctypes; sig = ctypes.c_int(); "
        "ctypes.CDLL(None).prctl(2, ctypes.byref(sig)); print(sig.value)"  # PR_GET_PDEATHSIG
    )
    child = real_run(
        [sys.executable, "-c", probe], preexec_fn=hook, capture_output=True, text=True, check=True
    )
    assert child.stdout.strip() == str(int(signal.SIGKILL))
