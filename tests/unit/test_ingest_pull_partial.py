"""A Langfuse pull that fails part-way leaves nothing in the mirror that later ingests read.

The pages went straight into the mirror's new batch folder: each failed attempt (three per
deployed run) added an orphan batch that every later ingest read again
(``langfuse_observation_seen_twice`` grew), in a folder that is a PII store. A kind read to its
end still keeps its pages and its watermark. The pages of a kind that stopped wait beside the
mirror for the next pull to resume them (``test_ingest_pull_resume``). The fake Langfuse is
``test_ingest_live``'s; the failure is injected after a number of pages.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from feinschliff.ingest import pull, run_ingest
from feinschliff.ingest.langfuse_http import PullFailed
from feinschliff.ingest.stage import IngestError
from tests.unit.test_ingest_live import PUBLIC, SECRET, pull_spec, serving, use_keys


@pytest.fixture()
def lf(home, monkeypatch):
    with serving() as srv:
        use_keys(monkeypatch, srv, PUBLIC, SECRET)
        yield srv


def _fail_after(monkeypatch, kind: str, pages: int, exc: BaseException) -> None:
    """``kind``'s pages after the first ``pages`` raise ``exc`` (a 500 past the retries, a
    kill)."""
    real = pull.cursor_pages

    def pages_then_fail(client, path, params, hint, **resume):  # cursor, first: a resumed pull
        for n, page in enumerate(real(client, path, params, hint, **resume), start=1):
            if path.endswith(kind) and n > pages:
                raise exc
            yield page

    monkeypatch.setattr(pull, "cursor_pages", pages_then_fail)


def _pages(home: Path, kind: str) -> list[Path]:
    """The pages later ingests read: in the mirror, not beside it (``.<source>.partial``)."""
    pages = (home / "ingest" / "mirror").glob(f"*/*/{kind}-page-*.json")
    return sorted(p for p in pages if not p.parent.parent.name.startswith("."))


def _watermark(home: Path) -> dict[str, str]:
    (mark,) = (home / "ingest" / "watermarks").glob("*.json")
    return json.loads(mark.read_text())


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_failed_attempts_leave_no_pages_that_later_ingests_read(lf, home, monkeypatch, tmp_path):
    with monkeypatch.context() as m:
        _fail_after(m, "observations", 1, PullFailed("injected: 500 Internal Server Error"))
        for attempt in range(3):  # a deployed run's retries
            with pytest.raises(IngestError, match="injected"):
                run_ingest(pull_spec(), tmp_path / f"failed{attempt}")
    assert _pages(home, "*") == []
    (beside,) = (home / "ingest" / "mirror").iterdir()  # no mirror, no temp left either...
    assert beside.name.startswith(".") and beside.name.endswith(".partial")
    assert len(list(beside.glob("*/observations-page-*.json"))) == 3  # ...but a page an attempt
    run_ingest(pull_spec(), tmp_path / "ok")
    manifest = _manifest(tmp_path / "ok")
    assert "langfuse_observation_seen_twice" not in json.dumps(manifest)
    assert manifest["counts"]["kto.jsonl"] == 27 and len(_pages(home, "observations")) == 5


def test_a_kind_read_to_its_end_keeps_its_pages_and_watermark(lf, home, monkeypatch, tmp_path):
    with monkeypatch.context() as m:
        _fail_after(m, "scores", 1, PullFailed("injected: 500 Internal Server Error"))
        with pytest.raises(IngestError, match="injected"):
            run_ingest(pull_spec(), tmp_path / "failed")
    assert len(_pages(home, "observations")) == 5  # 30 observations, 7 a page
    assert _pages(home, "scores") == []  # the first score page was no end
    assert "observations" in _watermark(home) and "scores" not in _watermark(home)
    run_ingest(pull_spec(), tmp_path / "ok")
    assert len(_pages(home, "scores")) == 10  # 65 scores, 7 a page: each once
    assert _manifest(tmp_path / "ok")["counts"]["kto.jsonl"] == 27


def test_a_killed_pulls_pages_are_never_read_and_cleaned_by_the_next(
    lf, home, monkeypatch, tmp_path
):
    with monkeypatch.context() as m:
        _fail_after(m, "observations", 2, KeyboardInterrupt())
        m.setattr(shutil, "rmtree", lambda *a, **k: None)  # a kill runs no clean-up
        with pytest.raises(KeyboardInterrupt):
            run_ingest(pull_spec(), tmp_path / "killed")
    mirrors = home / "ingest" / "mirror"
    left = [p for p in mirrors.rglob("*-page-*.json")]
    assert len(left) == 2  # the killed pull's pages are on disk...
    run_ingest(pull_spec(), tmp_path / "next")
    manifest = _manifest(tmp_path / "next")
    assert "langfuse_observation_seen_twice" not in json.dumps(manifest)  # ...but never read
    assert manifest["counts"]["kto.jsonl"] == 27
    assert not any(p.exists() for p in left)  # the next pull resumed from them: moved, not left
    assert [p.name for p in mirrors.iterdir() if p.name.startswith(".")] == []


def test_a_second_pull_of_a_source_waits_instead_of_removing_the_firsts_pages(lf, home, tmp_path):
    """A scheduled and a manual run at once: the second pull must not take the first one's
    pages for a killed pull's and remove them (the first would then place an incomplete kind
    and move its watermark past what it lost)."""
    import threading
    import time

    from feinschliff.artifacts import file_lock
    from feinschliff.ingest.pull import source_key, state_dir

    key = source_key(pull_spec().sources[0], lf.url, "project:cm-support-de")
    pages = state_dir() / "mirror" / f".{key}.partial" / "live" / "observations-page-1.json"
    pages.parent.mkdir(parents=True)
    pages.write_text('{"data": []}')
    with file_lock(state_dir() / "locks" / f"{key}.lock"):  # the first pull, still running
        second = threading.Thread(target=run_ingest, args=(pull_spec(), tmp_path / "second"))
        second.start()
        time.sleep(1.0)
        assert pages.exists() and second.is_alive()
    second.join(timeout=60)
    assert not pages.exists()  # once the first is done (or killed), it is a leftover
    assert (tmp_path / "second" / "manifest.json").exists()
