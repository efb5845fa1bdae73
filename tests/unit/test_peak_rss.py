"""metrics.json's peak RSS is the training run's own: not its parent's, not an earlier
training's in the same long-lived process, not an earlier child's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from feinschliff.train.peak_memory import wait_with_peak

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="VmHWM and clear_refs are Linux's")


def _allocating(mib: int, then: str = "") -> str:
    """Python code that makes ``mib`` MiB resident, frees it, then runs ``then``."""
    return f"b = bytearray({mib} << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\ndel b\n{then}"


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    return out.stdout.strip()


def test_a_stage_started_by_a_large_process_reports_its_own_peak():
    """ru_maxrss survives execve: a stage run from a 5.8 GiB test worker reported 5.8 GiB."""
    ballast = bytearray(1536 * 1024 * 1024)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1  # resident, not just reserved
    own = float(_run("from feinschliff.train.peak_memory import own_peak_mb; print(own_peak_mb())"))
    del ballast
    assert 10 < own < 1024, own  # the child's import footprint, far below the 1.5 GiB parent


def test_a_second_training_in_the_same_process_reports_its_own_peak():
    """A Prefect worker trains in-process run after run: the peak of an earlier, larger one
    (here 768 MiB, freed since) must not be reported for the next."""
    probe = _allocating(
        768,
        "from feinschliff.train.peak_memory import own_peak_mb, reset_own_peak\n"
        "before = own_peak_mb()\n"
        "assert reset_own_peak()\n"
        "print(before, own_peak_mb())",
    )
    before, after = map(float, _run(probe).split())
    assert before > 768, before  # the earlier run's peak was there
    assert after < 400, after  # and is gone after the reset


def test_a_child_reports_its_own_peak_not_the_largest_child_ever():
    """RUSAGE_CHILDREN is the largest child ever waited for: a small training after a large
    one reported the large one's peak. Run in a fresh, small process: a child's peak starts at
    its parent's resident size (exec keeps it), and a test worker may hold gigabytes."""
    probe = _allocating(
        0,
        "import subprocess, sys\n"
        "from feinschliff.train.peak_memory import reset_own_peak, wait_with_peak\n"
        f"subprocess.run([sys.executable, '-c', {_allocating(768)!r}], check=True)\n"
        "reset_own_peak()\n"
        "small = subprocess.Popen([sys.executable, '-c', 'import sys; sys.exit(3)'])\n"
        "code, peak = wait_with_peak(small)\n"
        "print(code, small.returncode, small.wait(), peak)",
    )
    code, returncode, waited, peak = _run(probe).split()
    assert code == returncode == waited == "3"
    assert 1 < float(peak) < 400, peak


def test_a_child_peak_includes_the_grandchildren_it_waited_for(tmp_path):
    """accelerate's launcher is light; the ranks it starts and waits for hold the model."""
    rank = tmp_path / "rank.py"
    rank.write_text("import sys\n" + _allocating(0).replace("0 << 20", "int(sys.argv[1]) << 20"))
    launcher = tmp_path / "launcher.py"
    launcher.write_text(
        f"import subprocess, sys\nsubprocess.run([sys.executable, {str(rank)!r}, sys.argv[1]])"
    )
    probe = (
        "import subprocess, sys\n"
        "from feinschliff.train.peak_memory import reset_own_peak, wait_with_peak\n"
        "reset_own_peak()\n"
        "for mib in ('0', '512'):\n"
        f"    print(*wait_with_peak(subprocess.Popen([sys.executable, {str(launcher)!r}, mib])))"
    )
    (idle_code, idle), (busy_code, busy) = (line.split() for line in _run(probe).splitlines())
    assert idle_code == busy_code == "0"
    assert float(idle) < 400 < 512 < float(busy), (idle, busy)


def test_an_interrupted_wait_kills_and_reaps_the_child(monkeypatch):
    """As subprocess.run does: a cancelled stage must not leave its training child running."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "wait4", interrupted)
    with pytest.raises(KeyboardInterrupt):
        wait_with_peak(child)
    monkeypatch.undo()
    assert child.returncode is not None and child.returncode < 0  # killed, and reaped
