"""An ingest reads a snapshot of its Langfuse mirror, taken under the pull's lock.

Compaction rewrites a changed row's older page, or removes it, in place. An ingest lists the
mirror's pages when its pull is done and reads them for minutes; another run's pull of the
same source meanwhile (a manual ingest beside the scheduled flow, two use cases with the same
project and filters) made it lose a score (its page rewritten: neither copy read) or fail with
``FileNotFoundError`` (its page removed). The fake Langfuse server is ``test_ingest_live``'s.
"""

from __future__ import annotations

import fcntl
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from feinschliff.ingest import run_ingest
from feinschliff.ingest import stage as ingest_stage
from feinschliff.ingest.pull import pull_source
from tests.unit.test_ingest_live import PUBLIC, SECRET, pull_spec, serving, use_keys
from tests.unit.test_pull_updates import (
    _a_day_later,
    _iso,
    _kto,
    _manifest,
    _mirror_rows,
    _thumbs_down_within,
)


@pytest.fixture()
def lf(home, monkeypatch):
    with serving() as srv:
        use_keys(monkeypatch, srv, PUBLIC, SECRET)
        yield srv


def _reading(home: Path) -> list[Path]:
    """What readers' snapshots are left (none once every ingest ended)."""
    return sorted((home / "ingest" / "reading").glob("*/*"))


@pytest.mark.parametrize("page_limit", [7, 1], ids=["page-rewritten", "page-removed"])
def test_a_pull_while_another_ingest_reads_the_mirror_takes_nothing_from_it(
    lf, home, tmp_path, monkeypatch, page_limit
):
    spec = pull_spec(page_limit=page_limit)
    run_ingest(spec, tmp_path / "first")
    score = _thumbs_down_within(lf, days=6)
    generation = score["subject"]["id"]
    real_open = ingest_stage.open_export
    other: dict = {}

    def open_then_another_pull(kind, path, *args, **kwargs):
        read = real_open(kind, path, *args, **kwargs)  # the pages are listed
        # meanwhile another run pulls the source: the thumbs-down was edited to a thumbs-up
        score.update(value=True, updatedAt=_iso(datetime.now(UTC)))
        _a_day_later(home)
        result = pull_source(spec.sources[0])
        getattr(result, "release", lambda: None)()  # its own snapshot, not read here
        other["stored"] = getattr(result, "stored", None)
        return read

    monkeypatch.setattr(ingest_stage, "open_export", open_then_another_pull)
    second = run_ingest(spec, tmp_path / "second")  # failed: FileNotFoundError (page-removed)
    monkeypatch.setattr(ingest_stage, "open_export", real_open)

    assert _kto(second.dir).get(generation) is False  # the mirror as its own pull left it
    assert _kto(second.dir) == _kto(tmp_path / "first")  # no score lost
    assert other["stored"]["scores"]["updated"] == 1  # the other pull did compact the mirror
    copies = [s for s in _mirror_rows(home, "scores") if s["id"] == score["id"]]
    assert [c["value"] for c in copies] == [True]
    assert _kto(run_ingest(spec, tmp_path / "third").dir)[generation] is True
    assert _reading(home) == []


def test_the_manifest_names_the_mirror_not_the_snapshot_it_read(lf, home, tmp_path):
    """Paths and input fingerprints name the mirror's pages, the same from run to run."""
    first = _manifest(run_ingest(pull_spec(), tmp_path / "first").dir)["sources"][0]
    second = _manifest(run_ingest(pull_spec(), tmp_path / "second").dir)["sources"][0]
    (mirror,) = (home / "ingest" / "mirror").iterdir()
    assert first["path"] == second["path"] == str(mirror)
    assert all(k.startswith(f"{mirror}/") for k in first["inputs"])
    assert first["inputs"] == second["inputs"]  # nothing new: the same pages, the same hashes
    assert _reading(home) == []
    # the rows' provenance and the quarantine name pages that exist after the ingest
    out = tmp_path / "second"
    rows = [json.loads(line) for f in out.glob("*.jsonl") for line in f.read_text().splitlines()]
    places = [r.get("provenance", {}).get("location") or r.get("location") for r in rows]
    assert places and all(p.startswith(f"{mirror}/") for p in places), places[:3]
    assert all(Path(p.split("#")[0]).exists() for p in places)


def test_a_reading_interrupted_removes_its_snapshot(lf, home, tmp_path, monkeypatch):
    """Ctrl-C (or any error) while the ingest reads: the snapshot goes with it."""

    def interrupted(*args, **kwargs):
        assert len(_reading(home)) == 2  # the snapshot and its lock, while it is read
        raise KeyboardInterrupt

    monkeypatch.setattr(ingest_stage, "open_export", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_ingest(pull_spec(), tmp_path / "out")
    assert _reading(home) == []


def test_a_killed_readers_snapshot_is_removed_by_the_next_pull(lf, home, tmp_path):
    """A reader killed (SIGKILL, OOM) leaves its snapshot; its flock died with it. A living
    reader's snapshot, locked, is kept."""
    run_ingest(pull_spec(), tmp_path / "first")
    (mirror,) = (home / "ingest" / "mirror").iterdir()
    folder = home / "ingest" / "reading" / mirror.name
    dead = folder / "4242-deadbeef"
    (dead / "20261101T000000000000Z").mkdir(parents=True)
    (dead / "20261101T000000000000Z" / "scores-page-1.json").write_text('{"data": []}')
    (folder / "4242-deadbeef.lock").write_text("pid 4242\n")
    alive = folder / "4343-cafecafe"
    alive.mkdir()
    with (folder / "4343-cafecafe.lock").open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        run_ingest(pull_spec(), tmp_path / "second")
        assert _reading(home) == [folder / "4343-cafecafe", folder / "4343-cafecafe.lock"]


def test_without_hard_links_the_snapshot_is_a_copy(lf, home, tmp_path, monkeypatch):
    def no_links(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    linked = run_ingest(pull_spec(), tmp_path / "linked")
    monkeypatch.setattr(os, "link", no_links)
    copied = run_ingest(pull_spec(), tmp_path / "copied")
    assert _kto(copied.dir) == _kto(linked.dir)
    assert _reading(home) == []
    mirror_pages = sorted((home / "ingest" / "mirror").rglob("*.json"))
    assert all(json.loads(p.read_text())["data"] for p in mirror_pages)  # the mirror untouched


def test_a_forked_child_neither_removes_nor_keeps_locked_its_parents_snapshot(tmp_path):
    """The ingest's worker pool forks while a snapshot is open: a child that ran the snapshot's
    finalizer removed the parent's snapshot, and children outliving a killed parent held its
    lock, so the next pull kept that snapshot for good."""
    from feinschliff.ingest import pull_snapshot

    mirror = tmp_path / "ingest" / "mirror" / "m"
    (mirror / "b1").mkdir(parents=True)
    (mirror / "b1" / "scores-page-1.json").write_text('{"data": []}')
    snap = pull_snapshot.take_snapshot(mirror, tmp_path / "ingest" / "reading")
    (lock,) = [fh for fh in pull_snapshot._LIVE.values() if snap.path.name in fh.name]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its copy of the lock is closed, and closing removes nothing
        try:
            os.write(write, b"closed" if lock.closed else b"open")
            snap.close()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 16) == b"closed"
    assert snap.path.is_dir()  # the parent's snapshot is still there...
    with open(lock.name) as other, pytest.raises(BlockingIOError):  # locked by the parent
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    snap.close()
    assert not snap.path.exists()
