"""One run per work directory: a second run fails at once naming the holder, and the lock dies
with its process (a rerun after a kill is not blocked)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from feinschliff.pipeline import RunInProgress, run_lock


def test_a_second_run_in_the_same_workdir_is_refused(tmp_path):
    with run_lock(tmp_path / "run"):
        refused = pytest.raises(RunInProgress, match=r"in use by a run \(pid \d+ on ")
        with refused, run_lock(tmp_path / "run"):
            pass
        with run_lock(tmp_path / "other"):  # another use case's workdir: independent
            pass
    with run_lock(tmp_path / "run"):  # released when the first run ended
        pass


def test_the_lock_dies_with_a_killed_run(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from feinschliff.pipeline import run_lock\n"
            f"with run_lock(Path({str(tmp_path / 'run')!r})):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInProgress), run_lock(tmp_path / "run"):
            pass
    finally:
        holder.kill()
        holder.wait()
    deadline = time.time() + 10
    while True:
        try:
            with run_lock(tmp_path / "run"):
                break
        except RunInProgress:
            assert time.time() < deadline, "the killed holder's lock was not released"
            time.sleep(0.1)


def test_a_second_train_stage_run_on_the_same_output_is_refused(tmp_path):
    """The GPU pool's train-stage flow holds its output: a retrain rerun after a crash cannot
    start a second training into the checkpoints the first one is still writing."""
    from flows.train_stage import train_stage

    out = tmp_path / "run" / "train"
    held = run_lock(out.parent, name=".train.lock")
    with held, pytest.raises(RunInProgress):  # refused before the recipe is even read
        train_stage.fn("missing.yaml", str(tmp_path / "data"), "0" * 64, str(out))


def test_the_refusal_names_the_holding_command(tmp_path, monkeypatch):
    """A scheduled run refused because `feinschliff gc` held its workdir for a few seconds
    said "in use by a run": the holder's command is named, so it reads as what it is."""
    monkeypatch.setattr(sys, "argv", ["/opt/venv/bin/feinschliff", "gc", "--yes"])
    refused = pytest.raises(RunInProgress, match=r"since \S+: feinschliff gc\)")
    with run_lock(tmp_path / "run"), refused, run_lock(tmp_path / "run"):
        pass
