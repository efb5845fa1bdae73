"""Peak resident memory of one training run, in MiB, for ``metrics.json``.

A training runs in this process (``launcher: python``) or in a child (accelerate's ranks,
Axolotl). Both counters the OS keeps by default span more than the run: a process's
``ru_maxrss`` (and Linux's ``VmHWM``) is its all-time peak, so a long-lived Prefect worker that
trained a larger model an hour ago reported that model's peak for every later run; and
``RUSAGE_CHILDREN`` is the largest child ever waited for. So the in-process peak is reset when
the run starts (Linux: ``/proc/self/clear_refs``), and a child's peak is read from its own
``wait4`` (which includes the grandchildren it waited for: accelerate's ranks).

A child's peak cannot be below its parent's resident size when it was started (exec keeps the
counter), so a child's figure is exact when the training outweighs the stage process, which
holds little more than torch: the case that matters; reset first, so the floor is the stage's
size now, not its earlier peak.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path


def reset_own_peak() -> bool:
    """Start this process's peak (``VmHWM``) over from its current size; False where the OS
    cannot (not Linux, or /proc read-only): then ``own_peak_mb`` is the all-time peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (Linux >= 4.0)
    except OSError:
        return False
    return True


def own_peak_mb() -> float:
    """This process's peak RSS since ``reset_own_peak`` (or since it started)."""
    hwm = _vm_hwm_mb()
    if hwm is not None:
        return hwm
    # ru_maxrss survives execve: only a fallback (a stage started by a large process would
    # report the parent's size at fork)
    return _rusage_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def wait_with_peak(proc: subprocess.Popen) -> tuple[int, float]:
    """Wait for ``proc``; its exit code (as ``Popen.returncode``) and the peak RSS of it and of
    the descendants it waited for. Interrupted (Ctrl-C, a cancelled task), the child is killed
    and reaped first, as ``subprocess.run`` does."""
    try:
        _, status, usage = os.wait4(proc.pid, 0)  # PEP 475: retried after signals
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait a second time
    return proc.returncode, _rusage_mb(usage.ru_maxrss)


def _rusage_mb(maxrss: int) -> float:
    return maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024  # bytes vs kB


def _vm_hwm_mb() -> float | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None  # not Linux
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return None
