"""Live Langfuse pulls where a team's setup or the server gets in the way: several projects on one
server, rate limits, a cursor that never moves, a mirror deleted for retention, an older server
without the v3 scores API.

A Langfuse server cannot run here: the client is tested against the local HTTP server of
``test_ingest_live`` (real-format pages, HTTP Basic auth choosing the project, cursor paging),
which can also answer with injected faults.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from feinschliff.ingest import run_ingest
from feinschliff.ingest.stage import IngestError
from tests.unit.test_ingest_live import PUBLIC, SECRET, pull_spec, serving, use_keys

OTHER = ("pk-lf-other", "sk-lf-other")


@pytest.fixture()
def lf(home, monkeypatch):
    """The fake lf, and the environment holding its first project's keys."""
    with serving() as srv:
        use_keys(monkeypatch, srv, PUBLIC, SECRET)
        yield srv


def _requests(lf, kind: str) -> list[dict[str, str]]:
    return [q for p, q in lf.requests if p.endswith(kind)]


def _texts(out: Path) -> str:
    return "".join(p.read_text() for p in sorted(out.glob("*.jsonl")))


def _mirror_pages(home: Path) -> list[Path]:
    return sorted((home / "ingest" / "mirror").glob("*/*/*-page-*.json"))


def _a_month_earlier_project_b(lf) -> None:
    """A second project on the same server: the samples a month older, with their own texts."""
    text = json.dumps(lf.tables).replace("2026-10-", "2026-09-").replace("Gerne", "Projekt B")
    lf.projects[OTHER] = ("cm-marketing-de", json.loads(text))


def test_two_projects_on_one_server_keep_their_own_mirror_and_watermark(
    lf, home, monkeypatch, tmp_path
):
    """Langfuse Cloud serves every project under one URL; only the keys choose the project.
    Both projects were pulled into one mirror: project B's dataset held project A's users'
    conversations, and B's older feedback was never asked for (A's watermark)."""
    _a_month_earlier_project_b(lf)
    run_ingest(pull_spec(), tmp_path / "a")
    assert "Gerne" in _texts(tmp_path / "a") and "Projekt B" not in _texts(tmp_path / "a")

    use_keys(monkeypatch, lf, *OTHER)
    lf.requests.clear()
    run_ingest(pull_spec(), tmp_path / "b")
    assert "fromStartTime" not in _requests(lf, "observations")[0]  # its own history
    b = _texts(tmp_path / "b")
    assert "Projekt B" in b and "Gerne" not in b
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert (
        manifest["sources"][0]["pull"]["watermark_after"]["identity"] == "project:cm-marketing-de"
    )
    assert len(list((home / "ingest" / "mirror").iterdir())) == 2


def test_a_mirror_from_before_projects_is_taken_over_by_the_first_project(
    lf, home, monkeypatch, tmp_path
):
    """Mirrors pulled before the project was part of their name stay incremental after an
    upgrade: the first project that pulls takes the mirror over and records itself in its
    watermark; another project then starts its own. The takeover is said in the manifest: such
    a mirror may hold other projects' feedback (use cases on one server shared it before), so
    the upgraded dataset silently kept their conversations."""
    from feinschliff.ingest.pull import source_key, state_dir

    run_ingest(pull_spec(), tmp_path / "first")
    source = pull_spec().sources[0]
    new, old = (
        source_key(source, lf.url, "project:cm-support-de"),
        source_key(source, lf.url),
    )
    marks = state_dir() / "watermarks"
    (state_dir() / "mirror" / new).rename(state_dir() / "mirror" / old)
    mark = json.loads((marks / f"{new}.json").read_text())
    (marks / f"{old}.json").write_text(
        json.dumps({k: v for k, v in mark.items() if k != "identity"})
    )
    (marks / f"{new}.json").unlink()

    lf.requests.clear()
    run_ingest(pull_spec(), tmp_path / "second")
    assert "fromStartTime" in _requests(lf, "observations")[0]
    assert [p.name for p in (state_dir() / "mirror").iterdir()] == [new]
    assert json.loads((marks / f"{new}.json").read_text())["identity"] == "project:cm-support-de"
    said = json.loads((tmp_path / "second" / "manifest.json").read_text())["notes"]
    taken = [n for n in said if "pulled by an older feinschliff" in n]
    assert len(taken) == 1 and str(state_dir() / "mirror" / new) in taken[0], said
    assert "project:cm-support-de" in taken[0] and f"{new}.json" in taken[0]
    run_ingest(pull_spec(), tmp_path / "third")  # its own mirror now: nothing more to say
    said = json.loads((tmp_path / "third" / "manifest.json").read_text())["notes"]
    assert not [n for n in said if "older feinschliff" in n], said

    _a_month_earlier_project_b(lf)
    use_keys(monkeypatch, lf, *OTHER)
    lf.requests.clear()
    run_ingest(pull_spec(), tmp_path / "b")
    assert "fromStartTime" not in _requests(lf, "observations")[0]
    said = json.loads((tmp_path / "b" / "manifest.json").read_text())["notes"]
    assert not [n for n in said if "older feinschliff" in n], said


def test_a_rate_limit_is_waited_out_as_the_server_asks(lf, monkeypatch, tmp_path):
    """429 answers were retried after 1, 2 and 4 s whatever ``Retry-After`` said, then the pull
    failed: Langfuse Cloud limits its API per minute, so a large pull failed on every run."""
    waits: list[float] = []
    monkeypatch.setattr("feinschliff.ingest.langfuse_http.time.sleep", waits.append)
    lf.faults = [("scores", 429, {"Retry-After": "20"})] * 4
    run_ingest(pull_spec(), tmp_path / "out")
    assert waits == [20.0] * 4
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["sources"][0]["pull"]["fetched"] == {"observations": 30, "scores": 65}


def test_a_pull_stopped_by_the_rate_limit_keeps_what_it_read_completely(lf, monkeypatch, tmp_path):
    """Past its waiting budget the pull fails saying it is rate limited (not "check the URL and
    keys"); the observations were read to the end before the scores hit the limit, so their
    watermark moved and the next run does not fetch them again."""
    monkeypatch.setattr("feinschliff.ingest.langfuse_http.time.sleep", lambda s: None)
    lf.faults = [("scores", 429, {"Retry-After": "200"})] * 2
    with pytest.raises(IngestError, match=r"is rate limited \(429 Too Many Requests") as caught:
        run_ingest(pull_spec(), tmp_path / "first")
    assert "Check the server URL" not in str(caught.value)
    lf.requests.clear()
    run_ingest(pull_spec(), tmp_path / "second")
    assert _requests(lf, "observations")[0]["fromStartTime"].startswith("2026-10-20T10:09:44")
    assert "fromTimestamp" not in _requests(lf, "scores")[0]
    manifest = json.loads((tmp_path / "second" / "manifest.json").read_text())
    assert manifest["counts"]["kto.jsonl"] == 27  # the observations of the failed pull count


def test_a_cursor_that_comes_back_fails_instead_of_filling_the_disk(lf, home, tmp_path):
    """A proxy that drops the query string answers page one forever: the pull wrote thousands of
    copies of it into the mirror (raw, unscrubbed feedback) until the disk was full."""
    lf.stuck_cursor = True
    with pytest.raises(IngestError, match="with a cursor it had already given"):
        run_ingest(pull_spec(), tmp_path / "out")
    assert _mirror_pages(home) == []  # a kind not read to its end leaves no pages
    assert list((home / "ingest" / "mirror").iterdir()) == []


def test_a_deleted_mirror_is_pulled_again_in_full(lf, home, tmp_path):
    """Deleting the mirror (retention, an erasure request) left its watermark: every later
    dataset held only the feedback after the deletion, and nothing said so."""
    run_ingest(pull_spec(), tmp_path / "first")
    shutil.rmtree(home / "ingest" / "mirror")
    lf.requests.clear()
    run_ingest(pull_spec(), tmp_path / "second")
    assert "fromStartTime" not in _requests(lf, "observations")[0]
    first, second = (
        json.loads((tmp_path / n / "manifest.json").read_text()) for n in ("first", "second")
    )
    assert second["counts"] == first["counts"]
    assert any("missing or empty" in n and "sources[0]" in n for n in second["notes"])


def test_a_server_without_the_v3_scores_api_is_named(lf, tmp_path):
    """The observations answered on the same base URL, so "no Langfuse API there (check the base
    URL)" sent users the wrong way: self-hosted Langfuse has the v3 scores API from 3.180
    (3.179 behind a flag)."""
    lf.faults = [("scores", 404, {})]
    with pytest.raises(IngestError, match="has no v3 scores API") as caught:
        run_ingest(pull_spec(), tmp_path / "out")
    assert "without /api/public" not in str(caught.value) and "v3.180.0" in str(caught.value)
