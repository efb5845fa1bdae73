"""Live pulls whose server fails: one line naming the server, the endpoint and the cause, exit 1.

A remote Langfuse or Argilla server cannot run here, so the clients talk to a local HTTP server
(a thread on 127.0.0.1) that answers the way a misconfigured deployment does: 404 for every
path (a wrong base URL, a reverse proxy's prefix), an HTML login page with status 200 (a proxy
in front of the API), 503 for good (a server that is down behind its load balancer), a
redirect; or to a port where nothing listens. The Argilla SDK (argilla 2.8.0) gets the REST
exchanges recorded from it (data/fixtures/argilla/live/responses.json) where a test needs a
working server with a dataset that is missing.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

from feinschliff.ingest import run_ingest
from feinschliff.ingest.stage import IngestError
from feinschliff.recipe import FeedbackSpec
from tests.cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
EXCHANGES = json.loads((ROOT / "data/fixtures/argilla/live/responses.json").read_text())
SAMPLES = ROOT / "data" / "samples" / "langfuse"


def _rows(kind: str) -> list[dict]:
    return [
        r
        for p in sorted(SAMPLES.glob(f"{kind}-page-*.json"))
        for r in json.loads(p.read_text())["data"]
    ]


class Failing(ThreadingHTTPServer):
    """``mode``: ok (the sample pages, one page each), 404, html, 503, redirect, argilla (the
    recorded SDK exchanges)."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.mode = "ok"
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Failing

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = urlparse(self.path).path
        self.server.requests.append(path)
        mode = self.server.mode
        if mode == "argilla":
            for ex in EXCHANGES:
                if ex["method"] == "GET" and ex["path"] == path:
                    return self._send(ex["status"], json.dumps(ex["response"]).encode())
            return self._send(404, b'{"detail": "Not Found"}')
        if mode in ("ok", "surrogate"):
            rows = _rows(path.rsplit("/", 1)[-1])
            if mode == "surrogate" and path.endswith("observations"):
                rows[0] = {**rows[0], "output": '"Gern \ud83d geschehen"'}  # half an emoji
            return self._send(200, json.dumps({"data": rows, "meta": {}}).encode())
        if mode == "html":
            return self._send(200, b"<html><body>Bitte anmelden</body></html>", "text/html")
        if mode == "redirect":
            return self._send(302, b"", headers={"Location": "/login"})
        status = {"404": 404, "503": 503}[mode]
        self._send(status, b'{"message": "nope"}')

    def _send(self, status: int, body: bytes, kind="application/json", headers=None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def server(home, monkeypatch):
    srv = Failing()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    for name, value in [
        ("LANGFUSE_PUBLIC_KEY", "pk-lf-test"),
        ("LANGFUSE_SECRET_KEY", "sk-lf-test"),
        ("ARGILLA_API_KEY", "argilla.apikey"),
    ]:
        monkeypatch.setenv(name, value)
    for name in ("PREFECT_API_URL", "LANGFUSE_BASE_URL", "LANGFUSE_HOST", "ARGILLA_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("feinschliff.ingest.langfuse_http.time.sleep", lambda s: None)  # retries
    yield srv
    srv.shutdown()
    srv.server_close()


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed when this returns


def spec(kind: str, **pull) -> FeedbackSpec:
    return FeedbackSpec.model_validate(
        {"sources": [{"kind": kind, "pull": pull}], "pii": {"mode": "off"}}
    )


def watermarks(home: Path) -> dict[str, str]:
    folder = home / "ingest" / "watermarks"
    return {p.name: p.read_text() for p in folder.glob("*.json")} if folder.exists() else {}


# The pull's first request asks which project the keys read; a server without that endpoint
# (404) is asked for observations next.
PROJECTS, OBSERVATIONS = "/api/public/projects", "/api/public/v2/observations"


@pytest.mark.parametrize(
    ("mode", "endpoint", "said", "requests"),
    [
        ("404", OBSERVATIONS, "answered 404 Not Found: no Langfuse API there", 2),
        ("html", PROJECTS, "answered 200 OK: a body that is no JSON (text/html: '<html><body>Bitte", 1),
        ("503", PROJECTS, "answered 503 Service Unavailable: 4 times", 4),  # only overloads retry
        ("redirect", PROJECTS, "answered 302 Found: a redirect to /login", 1),
    ],
)  # fmt: skip
def test_a_langfuse_server_that_answers_no_api_page_fails_in_one_line(
    server, home, tmp_path, mode, endpoint, said, requests
):
    run_ingest(spec("langfuse", base_url=server.url), tmp_path / "first")
    marks = watermarks(home)
    assert marks
    server.mode, server.requests[:] = mode, []
    with pytest.raises(IngestError) as caught:
        run_ingest(spec("langfuse", base_url=server.url), tmp_path / "out")
    message = str(caught.value)
    assert f"{server.url} (GET {endpoint}) {said}" in message, message
    assert "pull.base_url" in message and "watermark is unchanged" in message
    assert "\n" not in message
    assert len(server.requests) == requests
    assert watermarks(home) == marks
    failed = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert failed["status"] == "failed" and failed["error"] == message


def test_an_unreachable_langfuse_names_the_variable_the_url_came_from(
    server, monkeypatch, tmp_path
):
    url = closed_port()
    monkeypatch.setenv("LANGFUSE_HOST", url)
    with pytest.raises(IngestError, match="ConnectError") as caught:
        run_ingest(spec("langfuse"), tmp_path / "out")
    message = str(caught.value)
    assert f"cannot reach {url} (GET {PROJECTS})" in message
    assert "(4 tries)" in message and "set by LANGFUSE_HOST" in message
    # a URL without its scheme fails the same way every time: no retries
    monkeypatch.setenv("LANGFUSE_BASE_URL", "localhost:3000")
    with pytest.raises(IngestError, match=r"UnsupportedProtocol.*\(1 tries\).*LANGFUSE_BASE_URL"):
        run_ingest(spec("langfuse"), tmp_path / "out")


def test_the_cli_says_what_failed_and_exits_1_without_a_traceback(server, tmp_path):
    server.mode = "html"
    sources = f'feedback.sources=[{{kind: langfuse, pull: {{base_url: "{server.url}"}}}}]'
    code, said = run_cli(
        "ingest", str(ROOT / "recipes" / "demo-de.yaml"), "--out", str(tmp_path / "o"),
        "--set", sources, "--pii", "off",
    )  # fmt: skip
    assert code == 1 and "Traceback" not in said
    assert f"{server.url} (GET {PROJECTS}) answered 200 OK" in said


@pytest.mark.parametrize(
    ("pull", "said"),
    [
        ({"dataset": "nosuch"}, "no dataset 'nosuch' in workspace (default) on {url}"),
        (
            {"dataset": "feedback-de", "workspace": "nosuch"},
            "no workspace 'nosuch' on {url} that ARGILLA_API_KEY can see",
        ),
    ],
)
def test_a_missing_argilla_dataset_or_workspace_is_named(server, tmp_path, pull, said):
    server.mode = "argilla"
    with pytest.raises(IngestError) as caught:
        run_ingest(spec("argilla", api_url=server.url, **pull), tmp_path / "out")
    assert said.format(url=server.url) in str(caught.value)


@pytest.mark.parametrize(
    ("mode", "said"),
    [
        ("404", " (GET /api/v1/me) failed: HTTP 404, Argilla SDK error: NotFoundError: "),
        ("503", " (GET /api/v1/me) failed: HTTP 503, Argilla SDK error: ArgillaAPIError: "),
        ("html", " failed: JSONDecodeError: "),
    ],
)
def test_an_argilla_server_that_fails_is_named_with_its_endpoint(server, tmp_path, mode, said):
    server.mode = mode
    with pytest.raises(IngestError) as caught:
        run_ingest(spec("argilla", dataset="feedback-de", api_url=server.url), tmp_path / "out")
    message = str(caught.value)
    assert f"Argilla pull: {server.url}{said}" in message, message
    assert "ARGILLA_API_URL" in message and "\n" not in message


def test_an_unreachable_argilla_server_fails_in_one_line(server, tmp_path):
    url = closed_port()
    with pytest.raises(IngestError, match=f"Argilla pull: {url}.*ConnectError"):
        run_ingest(spec("argilla", dataset="feedback-de", api_url=url), tmp_path / "a")


def test_a_failed_argilla_snapshot_keeps_the_settings_of_the_kept_records(server, home, tmp_path):
    """The dataset is found (the recorded GETs), then its records search fails (this replay has
    no POST): the mirror's settings must stay those its kept snapshot was annotated under, not
    be replaced by the new ones before any record arrived."""
    from feinschliff.ingest.pull import source_key, state_dir

    server.mode = "argilla"
    feedback = spec("argilla", dataset="feedback-de", api_url=server.url)
    mirror = state_dir() / "mirror" / source_key(feedback.sources[0], server.url)
    (mirror / ".argilla").mkdir(parents=True)
    (mirror / ".argilla" / "settings.json").write_text('{"kept": true}\n')
    with pytest.raises(IngestError, match="Argilla pull"):
        run_ingest(feedback, tmp_path / "out")
    # (the mirror was taken over under the dataset id's name, as an upgraded one is)
    (settings,) = (state_dir() / "mirror").glob("*/.argilla/settings.json")
    assert settings.read_text() == '{"kept": true}\n'
    assert list(settings.parent.parent.glob("records-*")) == []  # the partial one is removed


def test_a_lone_surrogate_in_a_pulled_page_quarantines_its_row_not_the_pull(server, tmp_path):
    """JSON allows a lone surrogate escape (half an emoji cut by a client); saving the page into
    the mirror as UTF-8 failed, so every scheduled pull failed on that one observation."""
    server.mode = "surrogate"
    feedback = spec("langfuse", base_url=server.url).model_copy(
        update={"max_quarantine_fraction": 0.5}  # 28 records: one is 3.6 %, and its score too
    )
    ref = run_ingest(feedback, tmp_path / "out")
    out = Path(ref.path)
    manifest = json.loads((out / "manifest.json").read_text())
    quarantined = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    reasons = [q["reason"] for q in quarantined]
    assert "text is not valid Unicode (lone surrogate)" in reasons, reasons
    assert manifest["counts"]["sft.jsonl"] > 0


def test_a_lone_surrogate_in_an_argilla_record_is_written_as_an_escape(tmp_path):
    """The SDK's records come from a remote Argilla server, which cannot run here: the record is
    a stand-in with the attributes ``argilla_row`` reads. A field holding half an emoji (legal
    JSON) made the snapshot's UTF-8 write fail, reported as 'no Argilla API JSON', on every
    scheduled pull; now the line keeps it as an escape and the reader quarantines it."""
    import types

    import argilla as rg

    from feinschliff.ingest.pull_argilla import _argilla_snapshot
    from feinschliff.specs.feedback import ArgillaPull

    class Fields(dict):
        def to_dict(self):
            return dict(self)

    record = types.SimpleNamespace(
        _model=types.SimpleNamespace(updated_at=None),
        responses=[],
        id="r1",
        _server_id=None,
        status="completed",
        fields=Fields(prompt="Hallo", response="Gern \ud83d geschehen"),
    )
    dataset = types.SimpleNamespace(records=lambda **kw: iter([record]))
    pull = ArgillaPull.model_validate({"dataset": "feedback-de", "api_url": "http://a:6900"})
    _, count = _argilla_snapshot(rg, dataset, pull, tmp_path / "records.jsonl")
    line = (tmp_path / "records.jsonl").read_bytes().decode("utf-8")  # strict UTF-8
    assert count == 1 and json.loads(line)["fields"]["response"] == "Gern \ud83d geschehen"
