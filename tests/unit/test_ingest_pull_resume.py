"""A Langfuse pull that stopped part-way is resumed from its last saved page by the next pull.

Before, a kind that failed or was killed after hundreds of pages kept nothing, and the next
pull read it from page 1 again: a first pull of a large project on a rate-limited plan was all
or nothing. The fake Langfuse is ``test_ingest_live``'s (stateless offset cursors, like
Langfuse's keyset cursors: the same query and cursor answer the same rows whenever asked); the
failure is injected after a number of pages, as in ``test_ingest_pull_partial``.
"""

from __future__ import annotations

import base64
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from feinschliff.ingest import pull, pull_resume, run_ingest
from feinschliff.ingest.langfuse_http import PullFailed
from feinschliff.ingest.stage import IngestError
from tests.unit.test_ingest_live import PUBLIC, SECRET, pull_spec, serving, use_keys
from tests.unit.test_ingest_pull_partial import _fail_after
from tests.unit.test_langfuse_legacy_pull import serving as legacy_serving

OBS = "/api/public/v2/observations"
SCORES = "/api/public/v3/scores"


@pytest.fixture()
def lf(home, monkeypatch):
    with serving() as srv:
        use_keys(monkeypatch, srv, PUBLIC, SECRET)
        yield srv


def _stop(monkeypatch, tmp_path: Path, kind: str, pages: int, exc: BaseException | None = None):
    with monkeypatch.context() as m:
        _fail_after(m, kind, pages, exc or PullFailed("injected: 500 Internal Server Error"))
        with pytest.raises(type(exc) if exc else IngestError):
            run_ingest(pull_spec(), tmp_path / "stopped")


def _asked(lf, path: str) -> list[int]:
    """The offsets each request for ``path`` asked for (0: page 1, no cursor)."""
    return [
        json.loads(base64.b64decode(q["cursor"]))["offset"] if "cursor" in q else 0
        for p, q in lf.requests
        if p == path
    ]


def _mirror(home: Path) -> dict[str, list]:
    """What later ingests read: the rows of each page name, whichever batch holds it."""
    pages: dict[str, list] = {}
    for page in sorted((home / "ingest" / "mirror").glob("*/*/*-page-*.json")):
        if not page.parent.parent.name.startswith("."):
            pages.setdefault(page.name, []).extend(json.loads(page.read_text())["data"])
    return pages


def _watermark(home: Path) -> dict[str, str]:
    (mark,) = (home / "ingest" / "watermarks").glob("*.json")
    return json.loads(mark.read_text())


def _state(home: Path, kind: str) -> Path:
    (state,) = (home / "ingest" / "mirror").glob(f".*.partial/{kind}.resume.json")
    return state


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _straight(monkeypatch, home: Path, tmp_path: Path) -> tuple[dict, dict, dict]:
    """The mirror, watermark and manifest of one uninterrupted pull (in another home)."""
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "straight"))
    run_ingest(pull_spec(), tmp_path / "straight-out")
    got = (_mirror(tmp_path / "straight"), _watermark(tmp_path / "straight"))
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(home))
    return (*got, _manifest(tmp_path / "straight-out"))


def _notes(manifest: dict) -> str:
    return json.dumps(manifest["sources"][0])


def test_observations_resume_at_the_saved_cursor(lf, home, monkeypatch, tmp_path, caplog):
    mirror, mark, manifest = _straight(monkeypatch, home, tmp_path)
    _stop(monkeypatch, tmp_path, "observations", 3)  # pages 1-3 of 5 saved, then a 500 storm
    lf.requests.clear()
    caplog.set_level("INFO")
    run_ingest(pull_spec(), tmp_path / "resumed")
    assert _asked(lf, OBS) == [21, 28]  # pages 4 and 5 (7 a page), not page 1 again
    assert "resuming the observations of" in caplog.text and "at page 4" in caplog.text
    assert _mirror(home) == mirror and len(mirror) == 5 + 10  # 30 observations, 65 scores
    assert {k: v for k, v in _watermark(home).items() if k != "scores_rescanned"} == {
        k: v for k, v in mark.items() if k != "scores_rescanned"
    }
    resumed = _manifest(tmp_path / "resumed")
    assert resumed["counts"] == manifest["counts"]
    assert resumed["sources"][0]["pull"]["fetched"] == {"observations": 30, "scores": 65}
    assert "resumed the observations at page 4" in _notes(resumed)
    assert not list((home / "ingest" / "mirror").glob(".*"))  # nothing left beside the mirror


def test_scores_resume_after_the_observations_completed(lf, home, monkeypatch, tmp_path):
    mirror, mark, manifest = _straight(monkeypatch, home, tmp_path)
    _stop(monkeypatch, tmp_path, "scores", 4)
    started = json.loads(_state(home, "scores").read_text())["started"]
    assert "observations" in _watermark(home) and "scores" not in _watermark(home)
    lf.requests.clear()
    run_ingest(pull_spec(), tmp_path / "resumed")
    assert _asked(lf, SCORES) == [28, 35, 42, 49, 56, 63]  # pages 5-10
    assert _mirror(home) == mirror
    after = _watermark(home)
    assert after["scores"] == mark["scores"] and after["observations"] == mark["observations"]
    assert after["scores_rescanned"] == started  # the window it read was the first pull's
    assert _manifest(tmp_path / "resumed")["counts"] == manifest["counts"]


def test_the_watermark_stays_at_the_stopped_pulls_start(lf, home, monkeypatch, tmp_path):
    """Rows that arrived while the pull was stopped are newer than its cursor: the resumed
    kind's watermark must not pass the original start, or the next pull's lookback skips
    them. A client with its clock ahead stamped a row on page 4 in the future."""
    generations = [r for r in lf.tables["observations"] if r["type"] == "GENERATION"]
    future = datetime.now(UTC) + timedelta(days=1)
    generations[23]["startTime"] = future.isoformat().replace("+00:00", "Z")
    _stop(monkeypatch, tmp_path, "observations", 3)
    started = json.loads(_state(home, "observations").read_text())["started"]
    run_ingest(pull_spec(), tmp_path / "resumed")
    assert _watermark(home)["observations"] == started


@pytest.mark.parametrize("clean_up", [True, False], ids=["interrupted", "killed"])
def test_a_killed_pull_is_resumed(lf, home, monkeypatch, tmp_path, clean_up):
    mirror, _, manifest = _straight(monkeypatch, home, tmp_path)
    with monkeypatch.context() as m:
        if not clean_up:  # SIGKILL: no finally, no clean-up at all
            m.setattr(shutil, "rmtree", lambda *a, **k: None)
            m.setattr(pull_resume.KindRun, "close", lambda self, done: None)
        _stop(m, tmp_path, "observations", 2, KeyboardInterrupt())
    beside = _state(home, "observations").parent
    (beside / "stray").mkdir()  # a page-based pull's leftovers, a temp file: not resumable
    (beside / "stray" / "observations-page-1.json").write_text('{"data": []}')
    (beside / "scores.resume.json.tmp").write_text("{")
    lf.requests.clear()
    run_ingest(pull_spec(), tmp_path / "resumed")
    assert _asked(lf, OBS) == [14, 21, 28]
    assert _mirror(home) == mirror
    assert _manifest(tmp_path / "resumed")["counts"] == manifest["counts"]
    assert not beside.exists()


def test_a_changed_query_starts_over(lf, home, monkeypatch, tmp_path):
    """``page_limit`` is no part of the mirror's name (recipe filters are: another mirror), so
    the same mirror is asked with another query: the saved cursor belongs to the old one."""
    _stop(monkeypatch, tmp_path, "observations", 2)
    lf.requests.clear()
    run_ingest(pull_spec(page_limit=10), tmp_path / "next")
    assert _asked(lf, OBS) == [0, 10, 20]
    assert {q["limit"] for p, q in lf.requests if p == OBS} == {"10"}
    assert "its query changed" in _notes(_manifest(tmp_path / "next"))
    assert sorted(_mirror(home)) == sorted(
        [f"observations-page-{n}.json" for n in (1, 2, 3)]
        + [f"scores-page-{n}.json" for n in range(1, 8)]
    )
    assert _manifest(tmp_path / "next")["counts"]["kto.jsonl"] == 27


def test_a_stale_state_starts_over(lf, home, monkeypatch, tmp_path):
    _stop(monkeypatch, tmp_path, "observations", 2)
    state = _state(home, "observations")
    saved = json.loads(state.read_text())
    saved["started"] = (datetime.now(UTC) - timedelta(days=8)).isoformat()
    state.write_text(json.dumps(saved))
    lf.requests.clear()
    run_ingest(pull_spec(), tmp_path / "next")
    assert _asked(lf, OBS) == [0, 7, 14, 21, 28]
    assert "over 7 days ago" in _notes(_manifest(tmp_path / "next"))
    assert len([p for p in _mirror(home) if p.startswith("observations")]) == 5


def test_an_unreadable_state_starts_over(lf, home, monkeypatch, tmp_path):
    _stop(monkeypatch, tmp_path, "observations", 2)
    _state(home, "observations").write_text('{"cursor": ')  # a disk that filled up
    lf.requests.clear()
    run_ingest(pull_spec(), tmp_path / "next")
    assert _asked(lf, OBS) == [0, 7, 14, 21, 28]
    assert "cannot be read" in _notes(_manifest(tmp_path / "next"))
    assert _manifest(tmp_path / "next")["counts"]["kto.jsonl"] == 27


def test_a_refused_cursor_starts_over(lf, home, monkeypatch, tmp_path):
    _stop(monkeypatch, tmp_path, "observations", 2)
    lf.faults.append(("observations", 400, {}, {"message": "Invalid request data"}))
    lf.requests.clear()
    run_ingest(pull_spec(), tmp_path / "next")
    assert _asked(lf, OBS) == [14, 0, 7, 14, 21, 28]  # the saved cursor, refused; then page 1
    assert "refused the saved cursor" in _notes(_manifest(tmp_path / "next"))
    assert len([p for p in _mirror(home) if p.startswith("observations")]) == 5
    assert _manifest(tmp_path / "next")["counts"]["kto.jsonl"] == 27


def test_a_cursor_that_comes_back_leaves_nothing_to_resume(lf, home, monkeypatch, tmp_path):
    """A proxy that drops the query string answers page one whatever the cursor: resuming
    there would only add copies of page one on every pull."""
    _stop(monkeypatch, tmp_path, "observations", 2)
    lf.stuck_cursor = True
    with pytest.raises(IngestError, match="with a cursor it had already given"):
        run_ingest(pull_spec(), tmp_path / "stuck")
    assert not list((home / "ingest" / "mirror").glob(".*"))
    lf.stuck_cursor = False
    lf.requests.clear()
    run_ingest(pull_spec(), tmp_path / "next")
    assert _asked(lf, OBS) == [0, 7, 14, 21, 28]


def test_a_page_based_route_is_never_resumed(home, monkeypatch, tmp_path):
    """A self-hosted v3 serves observations by page number: offsets shift as rows arrive, so
    a stopped pull's pages are dropped and the next reads from page 1."""
    real = pull.kind_pages

    def pages_then_fail(pager, *args, **kw):
        for n, page in enumerate(real(pager, *args, **kw), start=1):
            if kw.get("path", args[1:2] and args[1]).endswith("observations") and n > 2:
                raise PullFailed("injected: 500 Internal Server Error")
            yield page

    with legacy_serving() as v3:
        use_keys(monkeypatch, v3, PUBLIC, SECRET)
        with monkeypatch.context() as m:
            m.setattr(pull, "kind_pages", pages_then_fail)
            with pytest.raises(IngestError, match="injected"):
                run_ingest(pull_spec(), tmp_path / "stopped")
        assert not list((home / "ingest" / "mirror").glob(".*"))
        v3.requests.clear()
        run_ingest(pull_spec(), tmp_path / "next")
    pages = [int(q["page"]) for p, q in v3.requests if p == "/api/public/observations"]
    assert pages == [1, 2, 3, 4, 5] and _manifest(tmp_path / "next")["counts"]["kto.jsonl"] == 27
