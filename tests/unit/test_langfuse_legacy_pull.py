"""Live Langfuse pulls from a self-hosted Langfuse v3: the page-based APIs its SDKs read.

A Langfuse server cannot run here, so the pull is tested against a local HTTP server (a thread
on 127.0.0.1) replaying real-format rows: the bundled v2 observation and v3 score pages
(data/samples/langfuse, langfuse 5.0.4 SDK), served either as they are (Langfuse Cloud / v4:
``GET /api/public/v2/observations``, ``GET /api/public/v3/scores``, cursor paging) or as a v3
server serves the same rows (``GET /api/public/observations``: ``input``/``output`` as JSON
values; ``GET /api/public/v2/scores``: flat rows, the text of a correction in ``stringValue``;
``page`` + ``limit`` paging with ``meta.totalPages``, newest first). The conversion follows the
Langfuse v3.225.4 source (``transformDbToApiObservation``, ``convertScoreToPublicApi``) and is
checked against the v1-shaped rows of data/fixtures/langfuse/traces (the same feedback). As a v3
server does, it answers the v2 observations route with 404 and its body, has no v3 scores
route before v3.180.0, and refuses (400) a ``limit`` over 100, a ``page`` below 1 and v2 scores
``fields`` without ``score``.
"""

from __future__ import annotations

import base64
import json
from contextlib import AbstractContextManager
from datetime import datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from feinschliff.ingest import run_ingest
from feinschliff.ingest.langfuse_http import PullFailed
from feinschliff.ingest.pull_legacy import numbered_pages
from feinschliff.ingest.stage import IngestError
from feinschliff.recipe import FeedbackSpec
from tests.unit import test_ingest_live as live

ROOT = Path(__file__).resolve().parents[2]
PUBLIC, SECRET = "pk-lf-test", "sk-lf-test"
V2_OBSERVATIONS_404 = {  # Langfuse v3.179 on, without LANGFUSE_MIGRATION_V4_ALLOW_PREVIEW_OPT_IN
    "message": "The observations v2 API is only available in a Langfuse v4 write mode. Learn "
    "more at: https://langfuse.com/docs/v4",
    "error": "LangfuseNotFoundError",
}
# fmt: off
V1_OBSERVATION_KEYS = frozenset([  # APIObservation (a strict schema) of Langfuse v3.225.4
    "id", "projectId", "traceId", "parentObservationId", "name", "type", "environment",
    "startTime", "endTime", "version", "release", "createdAt", "updatedAt", "input", "output",
    "metadata", "level", "statusMessage", "model", "modelParameters", "completionStartTime",
    "promptId", "promptName", "promptVersion", "usageDetails", "costDetails", "usage", "unit",
    "promptTokens", "completionTokens", "totalTokens", "usagePricingTierName",
    "usagePricingTierId", "modelId", "inputPrice", "outputPrice", "totalPrice",
    "calculatedInputCost", "calculatedOutputCost", "calculatedTotalCost", "latency",
    "timeToFirstToken",
])
# fmt: on
TYPES = {"GENERATION", "SPAN", "EVENT", "AGENT", "TOOL", "CHAIN", "RETRIEVER", "EVALUATOR"}


def _rows(folder: Path, prefix: str) -> list[dict]:
    pages = sorted(folder.glob(f"{prefix}-page-*.json"))
    return [r for p in pages for r in json.loads(p.read_text())["data"]]


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def v1_observation(row: dict) -> dict:
    """A v2 observation row as ``GET /api/public/observations`` returns it."""
    out = {k: v for k, v in row.items() if k in V1_OBSERVATION_KEYS}
    for key in ("input", "output"):  # v1 parses the stored JSON; v2 returns the raw string
        if isinstance(row.get(key), str):
            out[key] = json.loads(row[key])
    usage = row.get("usageDetails") or {}
    out["usage"] = {
        "unit": "TOKENS",
        **{k: usage.get(k, 0) for k in ("input", "output", "total")},
    }
    return out


def v2_score(row: dict, users: dict[str, str | None]) -> dict:
    """A v3 score row as ``GET /api/public/v2/scores`` returns it (fields default: score,trace)."""
    out = {k: v for k, v in row.items() if k not in ("subject", "value")}
    subject = row["subject"]
    out["traceId"] = subject.get("traceId") or (
        subject["id"] if subject["kind"] == "trace" else None
    )
    out["observationId"] = subject["id"] if subject["kind"] == "observation" else None
    value, kind = row.get("value"), row["dataType"]
    if kind == "BOOLEAN":
        out["value"], out["stringValue"] = float(bool(value)), "True" if value else "False"
    elif kind in ("CATEGORICAL", "CORRECTION"):
        out["value"], out["stringValue"] = 0.0, value
    elif kind == "TEXT":
        out["stringValue"] = value
    else:
        out["value"] = value
    out["trace"] = {"userId": users.get(out["traceId"]), "environment": row.get("environment")}
    return out


class FakeLangfuse(ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        samples = ROOT / "data" / "samples" / "langfuse"
        self.observations = _rows(samples, "observations")  # v2 shape, newest first
        self.scores = _rows(samples, "scores")  # v3 shape, newest first
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.version = "3.172.0"  # a self-hosted v3 without either new API
        self.stuck_page = False  # a proxy that drops the query string: page one forever
        self.arrive: list[dict] = []  # observations that arrive after page 1 was read
        self.v1_missing = False  # no v1 observations route either

    @property
    def v3_scores(self) -> bool:
        return self.version == "4.16.0" or tuple(map(int, self.version.split("."))) >= (3, 180)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(live.Handler):  # its quiet log and JSON answers; the routes of a v3 server
    server: FakeLangfuse  # type: ignore[assignment]

    def do_GET(self) -> None:  # noqa: C901 - one branch per route, as the server has
        srv = self.server
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        srv.requests.append((url.path, query))
        if url.path == "/api/public/health":
            return self._send(200, {"status": "OK", "version": srv.version})
        auth = self.headers.get("Authorization", "").removeprefix("Basic ")
        if not auth or base64.b64decode(auth).decode() != f"{PUBLIC}:{SECRET}":
            return self._send(401, {"message": "Invalid credentials"})
        v4 = srv.version == "4.16.0"
        if url.path == "/api/public/projects":
            return self._send(200, {"data": [{"id": "cm-support-de", "name": "support"}]})
        if url.path == "/api/public/v2/observations":
            if not v4:
                return self._send(*self._no_v2_observations())
            return self._cursor(self._observations(query), query)
        if url.path == "/api/public/v3/scores":
            if not srv.v3_scores:
                return self._send(404, {"message": "This page could not be found."})
            return self._cursor(self._scores(query), query)
        if v4 and url.path in ("/api/public/observations", "/api/public/v2/scores"):
            return self._send(404, {"message": "not available in events_only mode"})
        if url.path == "/api/public/observations" and srv.v1_missing:
            return self._send(404, {"message": "This page could not be found."})
        if url.path == "/api/public/observations":
            return self._paged([v1_observation(r) for r in self._observations(query)], query)
        if url.path == "/api/public/v2/scores":
            fields = query.get("fields")
            if fields is not None and "score" not in fields.split(","):
                return self._send(400, {"message": "Scores needs to be selected always."})
            users = {o["traceId"]: o.get("userId") for o in srv.observations}
            return self._paged([v2_score(r, users) for r in self._scores(query)], query)
        return self._send(404, {"message": "not found"})

    def _no_v2_observations(self) -> tuple[int, dict]:
        release = tuple(map(int, self.server.version.split(".")))
        if release < (3, 143):  # no such route: the framework's 404 page
            return 404, {"message": "This page could not be found."}
        if release < (3, 159):
            return 501, {"message": "v2 APIs are currently in beta and only available on "
                         "Langfuse Cloud", "error": "NotImplementedError"}  # fmt: skip
        return 404, V2_OBSERVATIONS_404

    def _observations(self, query: dict[str, str]) -> list[dict]:
        rows = [r for r in self.server.observations if r["type"] == query.get("type", r["type"])]
        rows = [r for r in rows if r.get("name") == query.get("name", r.get("name"))]
        since = query.get("fromStartTime")
        return [r for r in rows if not since or _time(r["startTime"]) >= _time(since)]

    def _scores(self, query: dict[str, str]) -> list[dict]:
        since = query.get("fromTimestamp")
        return [r for r in self.server.scores if not since or _time(r["timestamp"]) >= _time(since)]

    def _cursor(self, rows: list[dict], query: dict[str, str]) -> None:
        limit = int(query.get("limit", 50))
        offset = json.loads(base64.b64decode(query["cursor"]))["offset"] if "cursor" in query else 0
        meta = {}
        if offset + limit < len(rows):
            meta["cursor"] = base64.b64encode(json.dumps({"offset": offset + limit}).encode())
            meta["cursor"] = meta["cursor"].decode()
        self._send(200, {"data": rows[offset : offset + limit], "meta": meta})

    def _paged(self, rows: list[dict], query: dict[str, str]) -> None:
        srv = self.server
        page, limit = int(query.get("page", 1)), int(query.get("limit", 50))
        if not 1 <= limit <= 100 or page < 1 or query.get("type", "GENERATION") not in TYPES:
            return self._send(400, {"message": "Invalid request data"})
        page = 1 if srv.stuck_page else page
        total = len(rows)
        self._send(
            200,
            {
                "data": rows[(page - 1) * limit : page * limit],
                "meta": {
                    "page": page,
                    "limit": limit,
                    "totalItems": total,
                    "totalPages": -(-total // limit),
                },
            },
        )
        if srv.arrive and query.get("type"):  # new generations land while the pull pages
            srv.observations[:0], srv.arrive = srv.arrive, []


def serving() -> AbstractContextManager[FakeLangfuse]:
    return live.serving(FakeLangfuse)


@pytest.fixture()
def server(monkeypatch, home):
    with serving() as srv:
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", PUBLIC)
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", SECRET)
        monkeypatch.setenv("LANGFUSE_BASE_URL", srv.url)
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
        yield srv


def pull_spec(**pull) -> FeedbackSpec:
    return FeedbackSpec.model_validate(
        {
            "sources": [{"kind": "langfuse", "pull": {"page_limit": 7, **pull}}],
            "pii": {"mode": "off"},
            "heldout_fraction": 0,
        }
    )


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _training_rows(out: Path) -> tuple[dict[str, list[dict]], set[str]]:
    """The training rows without where they were read (mirror paths), and their annotators
    apart (compared on their own)."""
    rows, annotators = {}, set()
    for name in ("sft.jsonl", "preference.jsonl", "kto.jsonl"):
        lines = (out / name).read_text().splitlines()
        rows[name] = sorted(
            (_apart(json.loads(line), annotators) for line in lines), key=json.dumps
        )
    return rows, annotators


def _apart(row: dict, annotators: set[str]) -> dict:
    prov = dict(row["provenance"])
    annotators.update(prov.pop("annotators"))
    assert prov.pop("location").endswith("]")  # page#data[i], in each pull's own mirror
    return {**row, "provenance": prov}


def _paths(server: FakeLangfuse) -> list[str]:
    return [
        p for p, _ in server.requests if p not in ("/api/public/health", "/api/public/projects")
    ]


def test_the_conversion_matches_the_v1_shaped_fixture():
    """The rows the fake serves on the old routes agree with the same feedback in v1 shape
    (``GET /api/public/traces/{id}``: v1 observations and flat scores)."""
    traces = ROOT / "data" / "fixtures" / "langfuse" / "traces" / "traces-full.jsonl"
    full = [json.loads(line) for line in traces.read_text().splitlines()]
    obs = {o["id"]: o for t in full for o in t["observations"]}
    scores = {s["id"]: s for t in full for s in t["scores"]}
    with serving() as srv:
        pairs = [(v1_observation(r), obs[r["id"]]) for r in srv.observations if r["id"] in obs]
        flat = [(v2_score(r, {}), scores[r["id"]]) for r in srv.scores if r["id"] in scores]
    assert len(pairs) == 29 and len(flat) == 63
    for mine, real in pairs:
        assert (mine["input"], mine["output"]) == (real["input"], real["output"])
        assert set(real) - {"usage"} <= set(mine)
    for mine, real in flat:
        keys = ("traceId", "observationId", "dataType", "value", "stringValue", "authorUserId")
        assert {k: mine.get(k) for k in keys} == {k: real.get(k) for k in keys}


@pytest.mark.parametrize("version", ["3.172.0", "3.150.0", "3.100.0"])
def test_a_v3_server_is_pulled_through_its_page_based_apis(server, monkeypatch, tmp_path, version):
    """No v2 observations (404 with Langfuse's reason, 501, or no route at all), no v3 scores:
    the pull reads the v1 observations and v2 scores, page by page, and the ingest makes the
    same training rows from them as from the new APIs of a v4 server with the same feedback."""
    server.version = "4.16.0"
    run_ingest(pull_spec(), tmp_path / "v4")
    server.version, server.requests = version, []
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home-v3"))  # a mirror of its own

    run_ingest(pull_spec(), tmp_path / "v3")

    v3, v4 = _manifest(tmp_path / "v3"), _manifest(tmp_path / "v4")
    counts = [m["counts"][n] for m in (v3, v4) for n in ("sft.jsonl", "preference.jsonl")]
    assert counts == [22, 8, 22, 8] and v3["counts"]["kto.jsonl"] == 27
    (rows, annotators), (rows_v4, annotators_v4) = map(
        _training_rows, (tmp_path / "v3", tmp_path / "v4")
    )
    assert rows == rows_v4 and rows["kto.jsonl"]
    # an end user's thumbs: v1 observations carry no userId, the v2 score row's trace does
    assert "cg1w4yhtwejers827wc4bjm2z" in annotators == annotators_v4
    assert v3["sources"][0]["pull"]["fetched"] == {"observations": 30, "scores": 65}
    assert v3["counts"].get("quarantine.jsonl", 0) == 0
    # each new route is asked once per pull; the old ones page from 1 to meta.totalPages
    paths = _paths(server)
    assert paths.count("/api/public/v2/observations") == paths.count("/api/public/v3/scores") == 1
    pages = [q for p, q in server.requests if p == "/api/public/observations"]
    assert [q["page"] for q in pages] == ["1", "2", "3", "4", "5"]
    assert all(q["limit"] == "7" and q["type"] == "GENERATION" for q in pages)
    old = [
        q for p, q in server.requests if p in ("/api/public/observations", "/api/public/v2/scores")
    ]
    assert not any("fields" in q or "cursor" in q for q in old)
    scores = [q for p, q in server.requests if p == "/api/public/v2/scores"]
    assert len(scores) == 10  # 65 rows, 7 a page
    notes = " ".join(v3["notes"])
    assert "reading /api/public/observations (page-based)" in notes
    assert "reading /api/public/v2/scores (page-based)" in notes


def test_a_v3_server_with_v3_scores_pages_only_the_observations(server, tmp_path):
    """v3.180.0 on serves v3 scores: only the observations fall back."""
    server.version = "3.225.4"
    out = run_ingest(pull_spec(page_limit=500), tmp_path / "out")
    m = _manifest(out.dir)
    assert m["counts"]["sft.jsonl"] == 22 and m["counts"]["kto.jsonl"] == 27
    pages = [q for p, q in server.requests if p == "/api/public/observations"]
    assert [(q["page"], q["limit"]) for q in pages] == [("1", "100")]  # the route's maximum
    assert "/api/public/v2/scores" not in _paths(server)


def test_shifted_pages_are_stored_once_and_the_next_pull_is_incremental(server, tmp_path):
    """Generations that arrive while a pull pages (newest first) shift the later pages: that
    pull reads rows twice and stores them once, misses the new ones (they sort before the
    pages read) and does not move its watermark past them; the next pull, from the watermark
    less the lookback, reads them."""
    increment = ROOT / "data" / "fixtures" / "langfuse" / "live-increment"
    server.arrive = _rows(increment, "observations")  # 2 generations, after the first page

    first = _manifest(run_ingest(pull_spec(), tmp_path / "first").dir)

    pulled = first["sources"][0]["pull"]
    assert pulled["fetched"]["observations"] == 30 + 2  # page 2 starts 2 rows earlier
    assert pulled["stored"]["observations"]["new"] == 30
    assert pulled["watermark_after"]["observations"] == "2026-10-20T11:09:44.027Z"
    assert first["counts"]["kto.jsonl"] == 27
    assert "langfuse_observation_seen_twice" not in first["drops"]

    server.scores[:0] = _rows(increment, "scores")
    server.requests = []
    second = _manifest(run_ingest(pull_spec(), tmp_path / "second").dir)

    asked = [q for p, q in server.requests if p == "/api/public/observations"]
    assert asked[0]["fromStartTime"].startswith("2026-10-20T10:09:44")  # 1 h lookback
    assert (
        second["sources"][0]["pull"]["watermark_after"]["observations"]
        > (pulled["watermark_after"]["observations"])
    )
    assert second["counts"]["kto.jsonl"] == 27 + 2 and second["counts"]["sft.jsonl"] == 22 + 1
    assert "langfuse_observation_seen_twice" not in second["drops"]


def test_a_server_that_ignores_the_page_fails_instead_of_looping(server, tmp_path):
    server.stuck_page = True
    with pytest.raises(IngestError, match="paging would never end"):
        run_ingest(pull_spec(), tmp_path / "out")
    assert len([p for p in _paths(server) if p == "/api/public/observations"]) == 2


def test_a_wrong_base_url_fails_as_before_without_asking_the_old_route(server, tmp_path):
    """Nothing there showed it is a Langfuse (no projects endpoint, no Langfuse error body):
    the 404 says "wrong base URL" as before, and the old route is not asked."""
    with pytest.raises(IngestError, match=r"GET /api/public/v2/observations\) answered 404"):
        run_ingest(pull_spec(base_url=server.url + "/nothing-here"), tmp_path / "out")
    assert not [p for p in _paths(server) if p.endswith("/api/public/observations")]


def test_a_langfuse_without_either_observations_route_says_what_it_lacks(server, tmp_path):
    """A v4 server in ``events_only`` mode never lacks v2 observations; were both routes
    missing, the error is the one for the new route (its own words), after one try of each."""
    server.version = "3.172.0"
    server.v1_missing = True
    with pytest.raises(IngestError, match="only available in a Langfuse v4 write mode"):
        run_ingest(pull_spec(), tmp_path / "out")
    paths = _paths(server)
    assert (
        paths.count("/api/public/v2/observations") == paths.count("/api/public/observations") == 1
    )


def _client(answer) -> httpx.Client:
    """An httpx client whose server is ``answer(page, limit) -> (rows, meta)``."""

    def handle(request: httpx.Request) -> httpx.Response:
        page, limit = int(request.url.params["page"]), int(request.url.params["limit"])
        rows, meta = answer(page, limit)
        return httpx.Response(200, json={"data": rows, "meta": meta})

    return httpx.Client(base_url="http://lf.test", transport=httpx.MockTransport(handle))


def test_a_server_without_meta_page_that_ignores_the_page_fails():
    asked = []

    def same(page, limit):  # page one, whatever is asked; no meta.page to tell
        asked.append(page)
        return [{"id": "a"}, {"id": "b"}], {"totalItems": 9, "totalPages": 5}

    with pytest.raises(PullFailed, match="page 2 with page 1 again"):
        list(numbered_pages(_client(same), "/api/public/observations", {"limit": 2}, "hint"))
    assert asked == [1, 2]


def test_a_full_page_of_new_rows_between_two_pages_is_no_loop():
    """``limit`` rows arriving between two requests make page 2 repeat page 1 exactly; the
    count grew, so it is a shift (rows read twice, stored once), not a server ignoring it."""
    rows = [{"id": f"old-{i}"} for i in range(5)]

    def shifting(page, limit):
        answer = rows[(page - 1) * limit : page * limit]
        meta = {"page": page, "limit": limit, "totalItems": len(rows)}
        meta["totalPages"] = -(-len(rows) // limit)
        if page == 1:
            rows[:0] = [{"id": "new-1"}, {"id": "new-2"}]
        return answer, meta

    pages = list(numbered_pages(_client(shifting), "/x", {"limit": 2}, "hint"))
    ids = [r["id"] for p in pages for r in p["data"]]
    assert ids == ["old-0", "old-1", "old-0", "old-1", "old-2", "old-3", "old-4"]


def test_without_a_page_count_a_short_or_empty_page_is_the_last():
    def uncounted(page, limit):
        return [{"id": f"{page}-{i}"} for i in range(limit if page < 3 else 1)], {}

    pages = list(numbered_pages(_client(uncounted), "/x", {"limit": 2}, "hint"))
    assert [len(p["data"]) for p in pages] == [2, 2, 1]
