"""Live Argilla pull through the real argilla 2.8.0 SDK, and the ad-hoc CLI end to end.

An Argilla server cannot run here. The SDK talks to a local HTTP server (a thread on
127.0.0.1) that replays REST exchanges recorded from the unmodified SDK against the samples'
fake Argilla 2.8 server (data/fixtures/argilla/live/responses.json, made by
data/fixtures/_make/make_argilla_formats.py). The replay checks the API key header and can hide
records from ``POST /records/search`` (a record whose last submitted response was discarded or
deleted since the previous pull).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXCHANGES = json.loads((ROOT / "data/fixtures/argilla/live/responses.json").read_text())
API_KEY = "argilla.apikey"


class Replay(ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.bodies: list[dict] = []
        self.hidden: set[str] = set()  # record ids the search no longer finds

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Replay

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._answer(None)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.bodies.append(body)
        self._answer(body)

    def _answer(self, body: dict | None) -> None:
        if self.headers.get("X-Argilla-Api-Key") != API_KEY:
            return self._send(401, {"detail": "Could not validate credentials"})
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        for ex in EXCHANGES:
            if ex["method"] == self.command and ex["path"] == url.path:
                if url.path.endswith("/records/search"):  # all records, filtered, then paged
                    return self._send(200, _search(ex["response"], body, query, self.server.hidden))
                return self._send(ex["status"], ex["response"])
        self._send(404, {"detail": f"not recorded: {self.command} {url.path} {query}"})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _search(first_page: dict, body: dict | None, query: dict, hidden: set[str]) -> dict:
    """The recorded records (first page holds all 30) but the hidden ones, paged by
    ``offset``/``limit``."""
    items = [i for i in first_page["items"] if i["record"]["id"] not in hidden]
    offset, limit = int(query.get("offset", 0)), int(query.get("limit", 256))
    return {"items": items[offset : offset + limit], "total": len(items)}


@pytest.fixture()
def argilla_server(monkeypatch, home):
    srv = Replay()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("ARGILLA_API_URL", srv.url)
    monkeypatch.setenv("ARGILLA_API_KEY", API_KEY)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    yield srv
    srv.shutdown()
    srv.server_close()


def test_argilla_pull_keeps_only_submitted_responses_and_takes_snapshots(argilla_server, tmp_path):
    """Each pull is a full snapshot that replaces the previous one: Argilla keeps a record's
    ``updated_at`` when a response changes, so an ``updated_at`` watermark missed responses
    given after a record's first pull, and an older mirror copy kept withdrawn answers."""
    from feinschliff.ingest import run_ingest
    from feinschliff.recipe import FeedbackSpec

    spec = FeedbackSpec.model_validate(
        {
            "sources": [
                {
                    "kind": "argilla",
                    "pull": {"dataset": "feedback-de", "workspace": "stadtwerke-support"},
                }
            ],
            "pii": {"mode": "off"},
            "heldout_fraction": 0,
        }
    )
    run_ingest(spec, tmp_path / "first")
    first = json.loads((tmp_path / "first" / "manifest.json").read_text())
    # the live records keep each response's status: same numbers as the flat export
    assert (first["counts"]["sft.jsonl"], first["counts"]["preference.jsonl"]) == (25, 31)
    assert first["drops"]["argilla_response_discarded"] == 3
    assert argilla_server.bodies[0]["filters"]["and"][0]["scope"]["property"] == "status"
    assert first["sources"][0]["pull"]["watermark_after"]["records"]  # newest updated_at

    # one record's submitted answers were withdrawn on the server since
    records = [json.loads(line) for f in _mirror_files(spec) for line in f.read_text().splitlines()]
    gone = records[0]["id"]  # the record's id in the rows' provenance
    argilla_server.hidden.add(records[0]["_server_id"])  # the server's id of it
    argilla_server.bodies.clear()
    run_ingest(spec, tmp_path / "second")
    second = json.loads((tmp_path / "second" / "manifest.json").read_text())
    assert not [f for f in argilla_server.bodies[0]["filters"]["and"] if f["type"] == "range"]
    assert second["sources"][0]["pull"]["fetched"]["records"] == 29
    assert second["sources"][0]["records"] == 29  # the withdrawn record is gone
    assert len(_mirror_files(spec)) == 1  # the snapshot replaced the older one
    rows = (tmp_path / "second" / "sft.jsonl").read_text() + (
        tmp_path / "second" / "preference.jsonl"
    ).read_text()
    assert (
        gone not in rows
        and gone
        in (tmp_path / "first" / "sft.jsonl").read_text()
        + (tmp_path / "first" / "preference.jsonl").read_text()
    )
    # a third pull of the same server data: new mirror file, same rows, same key for training
    from feinschliff.artifacts import rows_sha256
    from feinschliff.ingest.stage import IngestError

    third = run_ingest(spec, tmp_path / "third")
    assert rows_sha256(third) == rows_sha256(run_ingest(spec, tmp_path / "fourth"))

    # the server suddenly finds nothing (wrong workspace, a key without permissions): refused,
    # and the mirror keeps the last snapshot
    kept = _mirror_files(spec)
    argilla_server.hidden.update(r["_server_id"] for r in records)
    with pytest.raises(IngestError, match="kept the previous snapshot"):
        run_ingest(spec, tmp_path / "fifth")
    assert _mirror_files(spec) == kept and len(kept[0].read_text().splitlines()) == 29


def _mirror_files(spec) -> list[Path]:
    """The snapshots of the source's mirror, which is named by the dataset's id on the server
    (the watermark records it)."""
    from feinschliff.ingest.pull import source_key, state_dir

    (mark,) = (state_dir() / "watermarks").glob("*.json")
    identity = json.loads(mark.read_text())["identity"]
    assert identity.startswith("dataset:")
    key = source_key(spec.sources[0], os.environ["ARGILLA_API_URL"], identity)
    return sorted((state_dir() / "mirror" / key).glob("records-*.jsonl"))


def test_adhoc_cli_reads_every_format_and_redacts(tmp_path):
    fixtures, samples = ROOT / "data" / "fixtures", ROOT / "data" / "samples"
    out = tmp_path / "out"
    env = {**os.environ, "FEINSCHLIFF_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "feinschliff.cli", "ingest", "--out", str(out)]
    for kind, path in [
        ("argilla", samples / "argilla/feedback-de"),
        ("argilla", fixtures / "argilla/hub-v1"),
        ("langfuse", samples / "langfuse"),
        ("langfuse", fixtures / "langfuse/ui-export/traces.csv"),
        ("langfuse", fixtures / "langfuse/traces"),
        ("langfuse", fixtures / "langfuse/dataset-items"),
    ]:
        cmd += ["--source", f"{kind}:{path}"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    counts = json.loads(p.stdout)["counts"]
    assert counts["sft.jsonl"] > 40 and counts["kto.jsonl"] > 20
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pii"]["mode"] == "redact" and manifest["pii"]["found"]["IBAN_CODE"] >= 2
    assert set(manifest["decontamination"]["eval_sets"]) >= {"de_wissen_mc", "de_kurzantwort"}
    assert (out / ".complete").exists() and (out / "README.md").exists()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "feinschliff.cli",
            "ingest",
            "--out",
            str(tmp_path / "x"),
            "--source",
            f"argilla:{samples / 'langfuse'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 2 and "looks like a Langfuse export" in bad.stderr


def test_a_pull_while_another_ingest_reads_the_argilla_mirror_takes_nothing_from_it(
    argilla_server, tmp_path, monkeypatch
):
    """Each pull replaces the mirror's records file; an ingest lists it when its pull is done
    and reads it afterwards. Another run's pull of the same dataset meanwhile (a manual ingest
    beside the scheduled flow) removed the file under the first reader. It reads a snapshot
    taken under the pull's lock now."""
    from feinschliff.ingest import run_ingest
    from feinschliff.ingest import stage as ingest_stage
    from feinschliff.ingest.pull import pull_source, state_dir
    from feinschliff.recipe import FeedbackSpec

    pull = {"dataset": "feedback-de", "workspace": "stadtwerke-support"}
    spec = FeedbackSpec.model_validate(
        {
            "sources": [{"kind": "argilla", "pull": pull}],
            "pii": {"mode": "off"},
            "heldout_fraction": 0,
        }
    )
    real_open = ingest_stage.open_export

    def open_then_another_pull(kind, path, *args, **kwargs):
        read = real_open(kind, path, *args, **kwargs)  # the mirror's files are listed
        pull_source(spec.sources[0]).release()  # another run's pull replaces the file
        return read

    monkeypatch.setattr(ingest_stage, "open_export", open_then_another_pull)
    run_ingest(spec, tmp_path / "first")
    first = json.loads((tmp_path / "first" / "manifest.json").read_text())
    assert (first["counts"]["sft.jsonl"], first["counts"]["preference.jsonl"]) == (25, 31)
    assert len(_mirror_files(spec)) == 1  # the other pull did replace it
    assert not list((state_dir() / "reading").glob("*/*"))  # every reader's snapshot removed
