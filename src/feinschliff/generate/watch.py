"""The generation child process, watched (``stage._run_child`` runs it): its process group
ends with the stage, a child that makes no progress after a teacher failure is stopped, and
the teacher's progress is logged every ``PROGRESS_S`` seconds (the child's own log goes to
``generate.log`` only: a run of hours said nothing until it ended)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from feinschliff.generate.ledger import Ledger

log = logging.getLogger(__name__)

# Once the ledger records a teacher failure, every later request is refused at once and the
# child's output is of no use (the run fails): it may still end by itself, or finish a request
# already in flight (its reply is cached), but after this many seconds without progress (its log
# and the ledger unchanged), or this many in all, it is stopped.
FAILED_QUIET_S = 5.0
FAILED_MAX_S = 60.0
# distilabel's line for an exception raised outside a step's batch handling (e.g. a write to a
# full disk): it then "stops", waiting for a batch that never comes, forever; the ledger may
# never say `failed` (its own write can fail too), so the log is the only sign. Rich wraps the
# line at the terminal width and puts "local.py:311" at its end: any whitespace between words.
PIPELINE_FAILED = re.compile(rb"Failed\s+with(?:\s+\S+\.py:\d+)?\s+an\s+unhandled\s+exception")
_OVERLAP = 400  # bytes read again: a line split across two reads
PROGRESS_S = 60.0
_POLL_S = 0.5


def _watch_child(
    cmd: list[str],
    log_file: IO[bytes],
    log_path: Path,
    ledger: Ledger,
    planned: int | None = None,
) -> tuple[int, dict[str, Any] | None]:
    """Run the child in a process group of its own (distilabel starts worker processes) and
    wait for it: its exit code and None, or, when it was stopped after a teacher failure,
    the ledger's state (stopped after distilabel's ``PIPELINE_FAILED`` line: its exit code
    and None). ``planned``: the most teacher requests the run can make (progress lines say
    "of at most"). However this returns or raises (KeyboardInterrupt included), the
    whole group is gone afterwards; the child itself ends its group when this process dies
    (``child._die_with_parent``)."""
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        failed_at = quiet_since = 0.0
        reported = time.monotonic()
        seen: tuple[Any, ...] = ()
        scanned, crashed = 0, False
        while True:
            try:
                return proc.wait(timeout=_POLL_S), None
            except subprocess.TimeoutExpired:
                pass
            state = _ledger_state(ledger)
            now = time.monotonic()
            if now - reported >= PROGRESS_S:
                reported = now
                log.info("generate: %s (log: %s)", progress_line(state, planned), log_path)
            if not crashed:
                scanned, crashed = _scan_log(log_path, scanned)
            if not (state.get("failed") or crashed):
                continue
            progress = (_stamp(log_path), _stamp(ledger.path))
            if not failed_at or progress != seen:
                failed_at = failed_at or now
                seen, quiet_since = progress, now
            if now - quiet_since >= FAILED_QUIET_S or now - failed_at >= FAILED_MAX_S:
                state = _ledger_state(ledger)
                why = "teacher failed" if state.get("failed") else "pipeline failed"
                log.info("generate: %s; stopping the generation process", why)
                _stop_group(proc)
                # None: no teacher failure to report; the stage reports the exit and the log
                return proc.returncode, state if state.get("failed") else None
    finally:
        _stop_group(proc)


def progress_line(state: dict[str, Any], planned: int | None) -> str:
    """The teacher's progress so far, from the run's ledger."""
    handled = sum(state.get(k, 0) for k in ("requests", "cache_hits", "refused"))
    of = f" of at most {planned}" if planned else ""
    line = (
        f"{handled}{of} teacher requests handled: {state.get('requests', 0)} sent, "
        f"{state.get('cache_hits', 0)} from the cache, {state.get('refused', 0)} not sent; "
        f"{state.get('tokens', 0)} tokens"
    )
    stop = state.get("failed") or state.get("budget_exhausted")
    return f"{line}; stopping: {stop}" if stop else line


def _stop_group(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM the child's process group, SIGKILL whatever is left of it after ``timeout``
    seconds (and any worker that outlived a child that has exited)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    # bounded: an interrupt at the wrong moment can leave Popen's wait lock taken, and this
    # runs in a `finally`; a SIGKILLed child not reaped here is reaped by init after we exit
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


def _scan_log(path: Path, offset: int) -> tuple[int, bool]:
    """Whether the log past ``offset`` has distilabel's ``PIPELINE_FAILED`` line, and the
    offset to scan from next (read incrementally: a run of hours writes a long log)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, offset - _OVERLAP))
            chunk = f.read()
    except OSError:
        return offset, False
    return max(0, offset - _OVERLAP) + len(chunk), PIPELINE_FAILED.search(chunk) is not None


def disk_full(tail: str, paths: list[Path], min_free: int = 1 << 20) -> OSError | None:
    """ENOSPC naming the first of ``paths`` (the output, the request caches) whose disk has
    less than ``min_free`` bytes left, when the child's log ``tail`` says a disk was full or
    one of them is; None otherwise (the stage then shows the log's tail)."""
    said = os.strerror(errno.ENOSPC) in tail or "ENOSPC" in tail
    for path in paths:
        where = next((p for p in (path, *path.parents) if p.exists()), None)
        with contextlib.suppress(OSError):
            st = os.statvfs(where) if where else None
            if st and st.f_bavail * st.f_frsize < min_free:
                return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    if said:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(paths[0]))
    return None


def _ledger_state(ledger: Ledger) -> dict[str, Any]:
    try:
        return ledger.read()
    except (OSError, ValueError):  # not written yet (the writer replaces it atomically)
        return {}


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
