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

    real_popen = subprocess.Popen

    def popen(cmd, **kwargs):
        seen.update(kwargs)
        (tmp_path / "backend-metrics.json").write_text(json.dumps({"global_step": 1}))
        return real_popen([sys.executable, "-c", "pass"])  # no accelerate run: only its hook

    monkeypatch.setattr(launch.subprocess, "Popen", popen)  # the subprocess module's own
    metrics = launch.launch_accelerate(recipe, "m", {"train": tmp_path / "t.jsonl"}, tmp_path)
    monkeypatch.undo()
    assert metrics["global_step"] == 1 and metrics["peak_rss_mb"] > 0
    hook = seen.get("preexec_fn")
    assert hook is not None
    # the hook, in a real child: the kernel will SIGKILL it when this process dies
    probe = (
        "import ctypes; sig = ctypes.c_int(); "
        "ctypes.CDLL(None).prctl(2, ctypes.byref(sig)); print(sig.value)"  # PR_GET_PDEATHSIG
    )
    child = subprocess.run(
        [sys.executable, "-c", probe], preexec_fn=hook, capture_output=True, text=True, check=True
    )
    assert child.stdout.strip() == str(int(signal.SIGKILL))


RANK = """
import os, sys, time
from feinschliff.train.launch import die_with_launcher
die_with_launcher()
open(sys.argv[1] + ".tmp", "w").write(str(os.getpid()))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(60)
"""
# what torch's elastic agent does with each rank: a session of its own
LAUNCHER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], start_new_session=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:  # a zombie is dead, only waiting to be reaped
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1][:1] != "Z"
    except OSError:
        return False


def _wait_for(path: Path, seconds: float) -> int | None:
    import time

    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(path.read_text()) if path.exists() else None


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_the_ranks_die_with_the_stage_process(tmp_path):
    """kill -9 of the stage killed `accelerate launch`, but its ranks trained on as orphans
    (torch starts them in sessions of their own), racing the rerun for the checkpoints."""
    import os
    import time

    from feinschliff.train.axolotl_backend import _die_with

    pid_file = tmp_path / "rank.pid"
    if (stage := os.fork()) == 0:  # the stage: starts the launcher, then dies as if by kill -9
        try:
            subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, RANK, str(pid_file)],
                preexec_fn=_die_with(os.getpid()),
                env=os.environ | {launch.STAGE_PID: str(os.getpid())},
            )
            _wait_for(pid_file, 60)
        finally:
            os._exit(0)
    rank = None
    try:
        os.waitpid(stage, 0)
        rank = _wait_for(pid_file, 1)
        assert rank is not None, "the rank never started"
        deadline = time.monotonic() + 10
        while _alive(rank) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(rank), "the rank outlived the stage and its launcher"
    finally:
        if rank is not None and _alive(rank):
            os.kill(rank, signal.SIGKILL)


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_a_rank_whose_launcher_is_already_gone_exits(tmp_path):
    """The launcher died before the rank's prctl took effect: it was reparented, and must not
    start training on its own."""
    import os

    env = os.environ | {launch.STAGE_PID: str(os.getpid() + 10**6)}  # not its grandparent
    proc = subprocess.run(
        [sys.executable, "-c", RANK, str(tmp_path / "rank.pid")], env=env, timeout=120
    )
    assert proc.returncode == 1 and not (tmp_path / "rank.pid").exists()
