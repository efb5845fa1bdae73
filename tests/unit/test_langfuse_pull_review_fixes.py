"""Review findings on the Langfuse pull (session 19): paging ends, erased mirrors, 404 wording.

The servers here are httpx mock transports or the local fake Langfuse of test_ingest_live (a
remote Langfuse cannot run here); the shapes follow Langfuse's own source (v3.225.4, v4.16).
"""

from __future__ import annotations

import itertools
import json
import shutil

import httpx
import pytest

from feinschliff.ingest import pull, run_ingest
from feinschliff.ingest.langfuse_http import EMPTY_PAGES, PullFailed, cursor_pages
from feinschliff.ingest.pull_legacy import numbered_pages
from feinschliff.ingest.stage import IngestError
from tests.unit.test_ingest_live import pull_spec
from tests.unit.test_ingest_pull_resume import _mirror, _stop, lf  # noqa: F401 - fixture

ROWS = [{"id": f"s{i}", "timestamp": f"2025-01-01T00:00:{59 - i:02d}Z"} for i in range(30)]
INVALID = set(range(10, 20))  # page 2 at limit 10: every row fails the server's validation


def _client(handler) -> httpx.Client:
    return httpx.Client(base_url="http://lf", transport=httpx.MockTransport(handler))


def test_an_empty_page_before_the_page_count_is_no_end():
    """v3's GET /api/public/v2/scores drops rows failing its schema after LIMIT/OFFSET while
    totalPages is the count's: an empty page 2 ended the pull and the oldest scores (page 3)
    were never read, with the watermark past them."""

    def handler(request: httpx.Request) -> httpx.Response:
        page, limit = int(request.url.params["page"]), int(request.url.params["limit"])
        raw = list(enumerate(ROWS))[(page - 1) * limit : page * limit]
        data = [r for i, r in raw if i not in INVALID]
        meta = {"page": page, "limit": limit, "totalItems": 30, "totalPages": 3}
        return httpx.Response(200, json={"data": data, "meta": meta})

    pages = numbered_pages(_client(handler), "/api/public/v2/scores", {"limit": 10}, "hint")
    got = [r["id"] for p in pages for r in p["data"]]
    assert got == [f"s{i}" for i in range(30) if i not in INVALID]


def test_empty_pages_with_ever_new_cursors_end_the_pull():
    """A real Langfuse makes each cursor from the last row it read; a broken proxy answering
    empty pages with new cursors was followed forever, saving a page file each time."""
    calls = itertools.count()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": [], "meta": {"cursor": f"c{next(calls)}"}})

    pages = cursor_pages(_client(handler), "/api/public/v3/scores", {"limit": 100}, "hint")
    with pytest.raises(PullFailed, match="empty pages in a row"):
        for _ in itertools.islice(pages, 3 * EMPTY_PAGES):
            pass


def test_a_page_count_that_never_ends_ends_the_pull():
    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        return httpx.Response(200, json={"data": [], "meta": {"page": page, "totalPages": 10**9}})

    pages = numbered_pages(_client(handler), "/api/public/observations", {"limit": 100}, "hint")
    with pytest.raises(PullFailed, match="empty pages in a row"):
        for _ in itertools.islice(pages, 3 * EMPTY_PAGES):
            pass


def test_a_deleted_mirror_takes_a_stopped_pulls_pages_with_it(lf, home, monkeypatch, tmp_path):  # noqa: F811
    """An erasure: scores deleted in Langfuse and the mirror deleted. A stopped pull's saved
    pages survived beside the mirror and were resumed into the new one: the erased scores
    came back."""
    _stop(monkeypatch, tmp_path, "scores", 2)  # observations complete, scores pages 1-2 saved
    (state,) = (home / "ingest" / "mirror").glob(".*.partial/scores.resume.json")
    folder = state.parent / json.loads(state.read_text())["folder"]
    pages = folder.glob("scores-page-*.json")
    erased = {r["id"] for p in pages for r in json.loads(p.read_text())["data"]}
    assert erased
    lf.tables["scores"] = [r for r in lf.tables["scores"] if r["id"] not in erased]
    for mirror in (home / "ingest" / "mirror").iterdir():
        if not mirror.name.startswith("."):
            shutil.rmtree(mirror)
    run_ingest(pull_spec(), tmp_path / "after-erasure")
    assert not {r["id"] for rows in _mirror(home).values() for r in rows} & erased


def test_a_404_after_pages_came_is_not_called_a_missing_api(lf, home, monkeypatch, tmp_path):  # noqa: F811
    """A load balancer's 404 on page 3 (a deploy) was worded "this Langfuse has no v3 scores
    API ... nor the older v2 scores API: upgrade the server", though both had answered or
    were never asked; it is now said as the server said it."""
    real = pull.cursor_pages

    def pages(client, path, params, hint, **kw):
        for n, page in enumerate(real(client, path, params, hint, **kw), start=1):
            if path.endswith("scores") and n == 2:
                lf.faults.append(("/v3/scores", 404, {}, {"message": "upstream not found"}))
            yield page

    monkeypatch.setattr(pull, "cursor_pages", pages)
    with pytest.raises(IngestError) as caught:
        run_ingest(pull_spec(), tmp_path / "out")
    said = str(caught.value)
    assert "upstream not found" in said
    assert "upgrade the server" not in said and "v2 scores" not in said
    assert not [p for p, _ in lf.requests if p == "/api/public/v2/scores"]
