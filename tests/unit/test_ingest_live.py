"""Live Langfuse pulls: cursor paging, credentials from the environment, incremental watermarks.

A Langfuse server cannot run here, so the client is tested against a local HTTP server (a
thread on 127.0.0.1) that replays real-format rows: the bundled v2 observation and v3 score
pages (data/samples/langfuse, made with the langfuse 5.0.4 SDK) and, as "new feedback" for the
second pull, data/fixtures/langfuse/live-increment. The server emulates what the client relies
on: HTTP Basic auth, ``limit`` + opaque ``meta.cursor`` paging (absent on the last page),
newest-first order, the ``fromStartTime`` / ``fromTimestamp`` filters, and projects chosen by
the key pair alone (one URL serves every project, ``GET /api/public/projects`` names the keys').
It refuses what Langfuse (v4.16 source) refuses with 400, so every pull here proves its queries
valid, and can act as a self-hosted v3 server (``langfuse_v3``: no v2 observations API).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from feinschliff.ingest import run_ingest
from feinschliff.ingest.stage import IngestError, MissingSecret
from feinschliff.recipe import FeedbackSpec
from tests.unit.test_langfuse_server_rules import V3_OBSERVATIONS_404, invalid_query

ROOT = Path(__file__).resolve().parents[2]
PUBLIC, SECRET = "pk-lf-test", "sk-lf-test"


def _rows(folder: Path, prefix: str) -> list[dict]:
    return [
        r
        for p in sorted(folder.glob(f"{prefix}-page-*.json"))
        for r in json.loads(p.read_text())["data"]
    ]


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class FakeLangfuse(ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        samples = ROOT / "data" / "samples" / "langfuse"
        self.tables = {
            "observations": _rows(samples, "observations"),
            "scores": _rows(samples, "scores"),
        }
        # key pair -> (project id, its tables); the samples are the first project's
        self.projects = {(PUBLIC, SECRET): ("cm-support-de", self.tables)}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.status = 200
        # (path suffix, status, headers[, body]): answered once each, in order, instead of a page
        self.faults: list[tuple] = []
        self.stuck_cursor = False  # a proxy that drops the query string: page one forever
        self.langfuse_v3 = False  # a self-hosted v3 with default settings
        self.dropped: set[str] = set()  # ids left out of a page after its cursor was made

    def add(self, folder: Path) -> None:
        for kind in self.tables:
            self.tables[kind] = _rows(folder, kind) + self.tables[kind]  # newest first

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: FakeLangfuse

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.server.requests.append((url.path, query))
        if url.path == "/api/public/health":  # no keys needed
            return self._send(
                200, {"status": "OK", "version": "3.172.0" if self.server.langfuse_v3 else "4.16.0"}
            )
        auth = self.headers.get("Authorization", "").removeprefix("Basic ")
        pair = tuple(base64.b64decode(auth).decode().split(":", 1)) if auth else ()
        if pair not in self.server.projects or self.server.status == 401:
            return self._send(401, {"message": "Invalid credentials"})
        project, tables = self.server.projects[pair]
        for fault in self.server.faults:
            if url.path.endswith(fault[0]):
                self.server.faults.remove(fault)
                body = fault[3] if len(fault) > 3 else {"message": "fault"}
                return self._send(fault[1], body, fault[2])
        if issues := invalid_query(url.path, query):
            return self._send(400, {"message": "Invalid request data", "error": issues})
        if url.path == "/api/public/v2/observations" and self.server.langfuse_v3:
            return self._send(404, V3_OBSERVATIONS_404)
        if url.path == "/api/public/projects":
            return self._send(200, {"data": [{"id": project, "name": project, "metadata": {}}]})
        if url.path == "/api/public/v2/observations":
            rows, stamp, since = tables["observations"], "startTime", query.get("fromStartTime")
            rows = [r for r in rows if r["type"] == query.get("type", r["type"])]
            rows = [r for r in rows if r.get("name") == query.get("name", r.get("name"))]
        elif url.path == "/api/public/v3/scores":
            rows, stamp, since = tables["scores"], "timestamp", query.get("fromTimestamp")
        else:
            return self._send(404, {"message": "not found"})
        if since:
            rows = [r for r in rows if _time(r[stamp]) >= _time(since)]
        limit = int(query.get("limit", 50))
        offset = json.loads(base64.b64decode(query["cursor"]))["offset"] if "cursor" in query else 0
        offset = 0 if self.server.stuck_cursor else offset
        page = [r for r in rows[offset : offset + limit] if r["id"] not in self.server.dropped]
        meta = {"limit": limit} if url.path.endswith("scores") else {}
        if offset + limit < len(rows):
            meta["cursor"] = base64.b64encode(
                json.dumps({"offset": offset + limit}).encode()
            ).decode()
        self._send(200, {"data": page, "meta": meta})

    def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def serving(make: type[ThreadingHTTPServer] = FakeLangfuse) -> Iterator[Any]:
    srv = make()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def use_keys(monkeypatch, server: FakeLangfuse, public: str, secret: str) -> None:
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", public)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", secret)
    monkeypatch.setenv("LANGFUSE_BASE_URL", server.url)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)


@pytest.fixture()
def server():
    with serving() as srv:
        yield srv


@pytest.fixture()
def creds(monkeypatch, home, server):
    use_keys(monkeypatch, server, PUBLIC, SECRET)


def pull_spec(**pull) -> FeedbackSpec:
    return FeedbackSpec.model_validate(
        {
            "sources": [{"kind": "langfuse", "pull": {"page_limit": 7, **pull}}],
            "pii": {"mode": "off"},
            "heldout_fraction": 0,
        }
    )


def test_pull_follows_cursors_and_matches_the_export(server, creds, tmp_path):
    run_ingest(pull_spec(), tmp_path / "first")
    m = json.loads((tmp_path / "first" / "manifest.json").read_text())
    assert (
        m["counts"]["sft.jsonl"],
        m["counts"]["preference.jsonl"],
        m["counts"]["kto.jsonl"],
    ) == (22, 8, 27)
    obs_requests = [q for p, q in server.requests if p.endswith("observations")]
    assert (
        len(obs_requests) == 5 and "cursor" not in obs_requests[0] and "cursor" in obs_requests[1]
    )
    assert obs_requests[0]["type"] == "GENERATION" and "io" in obs_requests[0]["fields"]
    assert all(int(q["limit"]) <= 100 for p, q in server.requests if p.endswith("scores"))
    pulled = m["sources"][0]["pull"]
    assert pulled["fetched"] == {"observations": 30, "scores": 65}
    assert (
        pulled["watermark_before"] == {}
        and pulled["watermark_after"]["observations"] == "2026-10-20T11:09:44.027Z"
    )


def test_second_pull_fetches_only_new_feedback(server, creds, tmp_path):
    run_ingest(pull_spec(), tmp_path / "first")
    server.requests.clear()
    server.add(ROOT / "data" / "fixtures" / "langfuse" / "live-increment")
    run_ingest(pull_spec(), tmp_path / "second")
    m = json.loads((tmp_path / "second" / "manifest.json").read_text())
    pulled = m["sources"][0]["pull"]
    since = {p.rsplit("/", 1)[-1]: q for p, q in server.requests if "cursor" not in q}
    assert since["observations"]["fromStartTime"].startswith("2026-10-20T10:09:44")  # 1 h lookback
    scores_mark = datetime.fromisoformat(
        pulled["watermark_before"]["scores"].replace("Z", "+00:00")
    )
    scores_since = datetime.fromisoformat(since["scores"]["fromTimestamp"].replace("Z", "+00:00"))
    assert scores_mark - scores_since == timedelta(hours=1)  # scores get the lookback too
    assert (
        pulled["fetched"]["observations"] < 5
        and pulled["watermark_after"]["observations"] > pulled["watermark_before"]["observations"]
    )
    # the dataset covers everything pulled so far: the 30 old generations plus the 2 new ones
    assert m["counts"]["kto.jsonl"] == 27 + 2 and m["counts"]["sft.jsonl"] == 22 + 1
    assert "langfuse_observation_seen_twice" not in m["drops"]  # the overlap is stored once


def _first_requests(server) -> dict[str, dict[str, str]]:
    return {p.rsplit("/", 1)[-1]: q for p, q in server.requests if "cursor" not in q}


def test_transport_settings_keep_the_mirror_and_its_watermark(server, creds, tmp_path):
    """A new page size or timeout is no new source: the next pull stays incremental."""
    from feinschliff.ingest.pull import _legacy_key, source_key, state_dir

    run_ingest(pull_spec(), tmp_path / "first")
    server.requests.clear()
    run_ingest(pull_spec(page_limit=5, timeout_s=30), tmp_path / "second")
    assert "fromStartTime" in _first_requests(server)["observations"]
    assert len(list((state_dir() / "mirror").iterdir())) == 1

    # A mirror named by the old key (transport settings in it) is taken over, not re-pulled.
    source = pull_spec(page_limit=5, timeout_s=30).sources[0]
    new = source_key(source, server.url, "project:cm-support-de")
    old = _legacy_key(source, server.url)
    assert new != old
    (state_dir() / "mirror" / new).rename(state_dir() / "mirror" / old)
    marks = state_dir() / "watermarks"
    (marks / f"{new}.json").rename(marks / f"{old}.json")
    server.requests.clear()
    run_ingest(pull_spec(page_limit=5, timeout_s=30), tmp_path / "third")
    assert "fromStartTime" in _first_requests(server)["observations"]
    assert [p.name for p in (state_dir() / "mirror").iterdir()] == [new]
    third = json.loads((tmp_path / "third" / "manifest.json").read_text())
    assert third["counts"]["kto.jsonl"] == 27  # the old mirror's rows are all still read


def test_credentials_come_only_from_the_environment(server, home, monkeypatch, tmp_path):
    monkeypatch.delenv("LANGFUSE_PUBLIC_KEY", raising=False)
    monkeypatch.delenv("LANGFUSE_SECRET_KEY", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(MissingSecret, match="LANGFUSE_PUBLIC_KEY"):  # exit 2, as configuration
        run_ingest(pull_spec(base_url=server.url), tmp_path / "out")
    assert server.requests == []
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", PUBLIC)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "wrong")
    with pytest.raises(IngestError, match="refused the credentials"):
        run_ingest(pull_spec(base_url=server.url), tmp_path / "out")


def test_a_recipe_cannot_hold_a_path_and_a_pull():
    with pytest.raises(ValueError, match="exactly one of"):
        FeedbackSpec.model_validate({"sources": [{"kind": "langfuse", "path": "x", "pull": {}}]})
    with pytest.raises(ValueError, match=r"pull\.argilla\.dataset\n  Field required"):
        FeedbackSpec.model_validate({"sources": [{"kind": "argilla", "pull": {}}]})
    with pytest.raises(ValueError, match=r"pull\.langfuse\.dataset\n  Extra inputs"):
        FeedbackSpec.model_validate(
            {"sources": [{"kind": "langfuse", "pull": {"dataset": "an argilla setting"}}]}
        )


def _thumbs(score_id: str, obs: dict, stamp: str) -> dict:
    return {
        "id": score_id,
        "name": "user-feedback",
        "dataType": "BOOLEAN",
        "value": True,
        "source": "API",
        "timestamp": stamp,
        "subject": {"kind": "observation", "id": obs["id"], "traceId": obs["traceId"]},
    }


def test_a_score_that_appears_late_is_still_pulled(server, creds, tmp_path):
    """Langfuse ingests asynchronously and stamps scores with the client's time: a thumbs-up
    stamped before the last pull's newest score, visible only after that pull, is fetched by
    the next one (the scores' lookback) and becomes a KTO row."""
    first = run_ingest(pull_spec(), tmp_path / "first")
    before = json.loads((first.dir / "manifest.json").read_text())
    mark = before["sources"][0]["pull"]["watermark_after"]["scores"]
    scored = {s["subject"].get(k) for s in server.tables["scores"] for k in ("id", "traceId")}
    quiet = next(
        o
        for o in server.tables["observations"]
        if o["type"] == "GENERATION" and not {o["id"], o["traceId"]} & scored
    )
    late = datetime.fromisoformat(mark.replace("Z", "+00:00")) - timedelta(minutes=30)
    server.tables["scores"].insert(0, _thumbs("late", quiet, late.isoformat()))

    second = run_ingest(pull_spec(), tmp_path / "second")

    after = json.loads((second.dir / "manifest.json").read_text())
    assert after["counts"]["kto.jsonl"] == before["counts"]["kto.jsonl"] + 1


def test_a_future_dated_row_does_not_hide_newer_rows(server, creds, tmp_path):
    """One client's clock a day ahead: the watermark stops at the pull's start, so a generation
    stamped correctly after that pull (and its thumbs) is still fetched by the next one."""
    newest = max(server.tables["observations"], key=lambda o: o["startTime"])
    now = datetime.now(UTC)
    ahead = {**newest, "id": "ahead", "startTime": (now + timedelta(days=1)).isoformat()}
    server.tables["observations"].insert(0, ahead)
    first = run_ingest(pull_spec(), tmp_path / "first")
    pulled = json.loads((first.dir / "manifest.json").read_text())["sources"][0]["pull"]
    mark = datetime.fromisoformat(pulled["watermark_after"]["observations"].replace("Z", "+00:00"))
    assert mark <= datetime.now(UTC)

    fresh = {
        **newest,
        "id": "fresh",
        "traceId": "f" * 32,
        "startTime": datetime.now(UTC).isoformat(),
        "output": json.dumps({"role": "assistant", "content": "Das erledigen wir heute noch."}),
    }
    server.tables["observations"].insert(0, fresh)
    server.tables["scores"].insert(0, _thumbs("thumbs-fresh", fresh, fresh["startTime"]))
    second = run_ingest(pull_spec(), tmp_path / "second")

    rows = [json.loads(line) for line in (second.dir / "kto.jsonl").read_text().splitlines()]
    assert "fresh" in {r["provenance"]["observation_id"] for r in rows}


def test_an_observation_pulled_again_counts_in_its_newest_copy(server, creds, tmp_path):
    """A generation first pulled while it was still streaming (no output yet) is fetched again,
    complete, by the next pull's lookback; the user's thumbs-up joins the complete copy."""
    newest = max(server.tables["observations"], key=lambda o: o["startTime"])
    done = {
        **newest,
        "id": "streaming",
        "traceId": "e" * 32,
        "output": json.dumps({"role": "assistant", "content": "Ihr Zählerstand ist gespeichert."}),
    }
    server.tables["observations"].insert(0, {**done, "output": None, "endTime": None})
    run_ingest(pull_spec(), tmp_path / "first")
    server.tables["observations"][0] = done  # the generation finished
    server.tables["scores"].insert(0, _thumbs("thumbs", done, datetime.now(UTC).isoformat()))

    second = run_ingest(pull_spec(), tmp_path / "second")

    m = json.loads((second.dir / "manifest.json").read_text())
    rows = [json.loads(line) for line in (second.dir / "kto.jsonl").read_text().splitlines()]
    assert "streaming" in {r["provenance"]["observation_id"] for r in rows}
    assert m["counts"]["quarantine.jsonl"] == 0
    assert "langfuse_observation_seen_twice" not in m["drops"]  # the stale copy replaced
    assert any("1 observations had changed in Langfuse" in n for n in m["notes"]), m["notes"]


def test_scores_outside_a_name_filtered_pull_are_counted_not_quarantined(server, creds, tmp_path):
    """Scores are pulled for every observation, observations only by name: a thumbs-up on a
    generation of another name is expected to lack its generation."""
    other = {**server.tables["observations"][0], "id": "other-name", "name": "smalltalk"}
    server.tables["observations"].insert(0, other)
    server.tables["scores"].insert(0, _thumbs("thumbs-other", other, datetime.now(UTC).isoformat()))

    out = run_ingest(pull_spec(name="support-answer"), tmp_path / "out")

    m = json.loads((out.dir / "manifest.json").read_text())
    assert m["counts"]["quarantine.jsonl"] == 0
    assert m["sources"][0]["skipped"]["langfuse_score_outside_pulled_observations"] == 1
