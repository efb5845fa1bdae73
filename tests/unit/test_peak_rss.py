"""metrics.json's peak RSS is the training process's own, not its parent's."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.skipif(sys.platform != "linux", reason="VmHWM is Linux's")
def test_a_stage_started_by_a_large_process_reports_its_own_peak():
    """ru_maxrss survives execve: a stage run from a 5.8 GiB test worker reported 5.8 GiB."""
    ballast = bytearray(1536 * 1024 * 1024)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1  # resident, not just reserved
    probe = "from feinschliff.train.stage import _peak_rss_mb; print(_peak_rss_mb('self'))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300
    )
    del ballast
    own = float(out.stdout.strip())
    assert 10 < own < 1024, own  # the child's import footprint, far below the 1.5 GiB parent
