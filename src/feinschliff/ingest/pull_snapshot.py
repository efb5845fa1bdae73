"""What an ingest reads of a Langfuse mirror: a snapshot of it, taken under the pull's lock.

A pull compacts the mirror in place (``pull_versions``: a changed row's older page is
rewritten, or removed when it held nothing else), and the ingest reads the mirror's pages for
minutes after the pull released its lock. Another run's pull of the same source meanwhile (a
manual ingest beside the scheduled flow, two use cases with the same project and filters) made
that reader lose a score (a rewritten page: neither copy read) or fail with
``FileNotFoundError`` (a removed one). So the pull ends, still under its lock, by hard-linking
every file of the mirror into a folder of the reader's own
(``$FEINSCHLIFF_HOME/ingest/reading/<mirror>/<pid>-<token>/``): pages are only ever replaced
by rename or unlinked, so the links keep the versions this pull left. Where the file system
has no hard links, the files are copied.

The reader removes its snapshot when it is done (``Snapshot.close``, in a ``finally``; at exit
or when the object is collected, if a caller forgot). A reader holds an flock on its
snapshot's lock file while it lives, so a killed one's snapshot is removed by the next pull
of the mirror (under the pull's lock: nobody takes a snapshot of it meanwhile): the lock
tells the dead from the living on every host that shares the folder, and a reused pid fools
nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import shutil
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from feinschliff.ingest.pull import PullResult

log = logging.getLogger(__name__)
# a snapshot's folder: <home>/ingest/reading/<mirror>/<pid>-<token> (take_snapshot)
_SNAPSHOT = re.compile(r"/ingest/reading/([^/]+)/\d+-[0-9a-f]{8}(?=[/#:]|$)")


def mirror_location(where: str) -> str:
    """A location read from a snapshot as the same place in the mirror, ``where`` unchanged
    otherwise. Rows' provenance and quarantine entries keep a path that exists after the
    ingest (the snapshot is removed) and that is the same from run to run. A pure function of
    the text: readers in worker processes apply it too (``records``)."""
    if "/ingest/reading/" not in where:
        return where
    return _SNAPSHOT.sub(r"/ingest/mirror/\1", where, count=1)


class Snapshot:
    """A reader's copy of a mirror (``path``), removed by ``close``."""

    def __init__(self, path: Path, lock: IO[str]):
        self.path = path
        self._close = weakref.finalize(self, _remove, path, lock, os.getpid())
        _LIVE[id(self)] = lock
        weakref.finalize(self, _LIVE.pop, id(self), None)

    def close(self) -> None:
        self._close()


def read_pulled(
    result: PullResult, read: Callable[[Path, list[str]], dict[str, Any]]
) -> dict[str, Any]:
    """The manifest record of a pulled source, read by ``read(path, notes)`` from the pull's
    mirror (a snapshot, removed however the reading ends). It names the mirror, not the
    snapshot: its paths and input fingerprints stay the same pages' from run to run."""
    try:
        record = read(result.mirror, result.notes)
    finally:
        result.release()
    # quarantine locations (``unreadable`` too) are mapped where the entries are made
    record["path"] = mirror_location(record["path"])
    record["inputs"] = {mirror_location(k): v for k, v in record["inputs"].items()}
    record["pull"] = {
        "fetched": result.fetched,  # rows the API returned, re-read windows included
        "stored": result.stored,  # per kind, of the ids fetched: new, unchanged, updated
        "watermark_before": result.watermark_before,
        "watermark_after": result.watermark_after,
    }
    return record


def take_snapshot(mirror: Path, reading: Path) -> Snapshot:
    """Link the mirror's files into a new folder under ``reading``; call it under the mirror's
    pull lock. Snapshots of readers that died are removed first."""
    folder = reading / mirror.name
    remove_dead(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{os.getpid()}-{secrets.token_hex(4)}"
    lock = (folder / f"{name}.lock").open("a+")
    fcntl.flock(lock, fcntl.LOCK_EX)  # before the folder exists: never seen unlocked
    snapshot = Snapshot(folder / name, lock)
    try:
        _link_tree(mirror, snapshot.path)
    except BaseException:
        snapshot.close()
        raise
    return snapshot


def _link_tree(mirror: Path, into: Path) -> None:
    into.mkdir()
    copied = False
    for path in sorted(mirror.rglob("*")):
        target = into / path.relative_to(mirror)
        if path.is_dir():
            target.mkdir(exist_ok=True)
            continue
        try:
            os.link(path, target)
        except OSError:  # no hard links here (some network and FUSE file systems)
            shutil.copy2(path, target)
            copied = True
    if copied:
        log.info("langfuse pull: no hard links in %s: the reader's snapshot is a copy", into)


def remove_dead(folder: Path) -> None:
    """Remove the snapshots in ``folder`` whose reader is gone (its lock is free)."""
    for lock_file in folder.glob("*.lock") if folder.is_dir() else []:
        with contextlib.suppress(OSError), lock_file.open("a+") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a reader is still reading it
            log.info("removing the mirror snapshot of a reader that ended: %s", lock_file)
            shutil.rmtree(lock_file.with_suffix(""), ignore_errors=True)
            lock_file.unlink(missing_ok=True)
    for orphan in folder.iterdir() if folder.is_dir() else []:  # a snapshot without its lock
        if orphan.is_dir() and not orphan.with_suffix(".lock").exists():
            shutil.rmtree(orphan, ignore_errors=True)


# Forked processes (the ingest's worker pool) inherit a snapshot's lock and finalizer: a
# child that exits would delete its parent's snapshot, and children that outlive a killed
# parent would hold its lock, so the next pull kept that snapshot for good. A child closes
# its copies of the lock files (the parent's flock stays) and never removes a snapshot.
_LIVE: dict[int, IO[str]] = {}


def _forget_in_child() -> None:
    for lock in list(_LIVE.values()):
        with contextlib.suppress(OSError):
            lock.close()
    _LIVE.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _remove(path: Path, lock: IO[str], owner: int) -> None:
    if os.getpid() != owner:  # a forked child: the snapshot is its parent's
        return
    try:
        shutil.rmtree(path, ignore_errors=True)
        Path(lock.name).unlink(missing_ok=True)
    finally:
        lock.close()  # releases the flock
