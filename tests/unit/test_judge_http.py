"""Judge HTTP handling: transient statuses are retried, every other failure is a JudgeError.

The judge is a local HTTP stub (tests/http_stub.py), not a vLLM: these tests need replies on
demand (429/408/503 then 200, a 401 echoing the API key, a body without choices), which a real
vLLM cannot be made to give. The real JudgeClient against a real vLLM judge runs in
tests/integration/test_vllm_judge.py; the connection-refused case below uses no stand-in.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from feinschliff.evaluate.judge import JudgeClient, JudgeError
from feinschliff.specs.evaluate import JudgeSpec
from tests.http_stub import StubHandler, base_url, serve

OK = json.dumps({"choices": [{"message": {"content": "Bewertung: [[7]]"}}]}).encode()
KEY = "sk-judge-secret-123"


def _judge(replies: list[tuple[int, bytes]], monkeypatch, retries: int = 3):
    """A stub judge answering ``replies`` in turn (the last one repeated); returns the client
    (no backoff) and the list of requests it saw."""
    seen: list[dict] = []

    class Handler(StubHandler):
        def do_POST(self) -> None:
            seen.append({"path": self.path, "auth": self.headers.get("Authorization")})
            self.read_body()
            status, data = replies[min(len(seen), len(replies)) - 1]
            self.respond(status, data)

    server = serve(Handler)
    monkeypatch.setenv("JUDGE_KEY", KEY)
    spec = JudgeSpec(
        base_url=base_url(server) + "/v1", model="m", api_key_env="JUDGE_KEY", retries=retries
    )
    return server, _client(spec), seen


def _client(spec: JudgeSpec) -> JudgeClient:
    client = JudgeClient(spec)
    client.backoff_s = 0.0  # retries at once
    return client


def _complete(client: JudgeClient) -> str:
    async def go() -> str:
        try:
            return await client.complete("system", "user", None)
        finally:
            await client.close()

    return asyncio.run(go())


@pytest.mark.parametrize("status", [429, 408, 503])
def test_a_transient_status_is_retried(monkeypatch, status):
    server, client, seen = _judge([(status, b'{"error": "slow down"}'), (200, OK)], monkeypatch)
    try:
        assert _complete(client) == "Bewertung: [[7]]"
    finally:
        server.shutdown()
    assert len(seen) == 2
    assert seen[0]["path"] == "/v1/chat/completions" and seen[0]["auth"] == f"Bearer {KEY}"


def test_a_refused_request_fails_at_once_without_the_key(monkeypatch):
    body = json.dumps({"error": f"invalid api key {KEY}"}).encode()
    server, client, seen = _judge([(401, body), (200, OK)], monkeypatch)
    try:
        with pytest.raises(JudgeError) as err:
            _complete(client)
    finally:
        server.shutdown()
    assert len(seen) == 1
    message = str(err.value)
    assert "401" in message and "/v1/chat/completions" in message and "invalid api key" in message
    assert KEY not in message


def test_retries_used_up_is_a_judge_error(monkeypatch):
    server, client, seen = _judge([(429, b'{"error": "rate limited"}')], monkeypatch, retries=2)
    try:
        with pytest.raises(JudgeError, match=r"3 attempt\(s\): HTTP 429: .*rate limited"):
            _complete(client)
    finally:
        server.shutdown()
    assert len(seen) == 3


def test_an_unreadable_reply_is_a_judge_error(monkeypatch):
    server, client, _ = _judge([(200, b'{"no": "choices"}')], monkeypatch)
    try:
        with pytest.raises(JudgeError, match="unreadable reply"):
            _complete(client)
    finally:
        server.shutdown()


def test_an_unreachable_judge_is_a_judge_error(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", KEY)
    spec = JudgeSpec(base_url="http://127.0.0.1:1/v1", model="m", retries=1, timeout_s=2)
    with pytest.raises(JudgeError, match="unavailable after 2 attempt"):
        _complete(_client(spec))


def test_evaluate_asks_the_judge_once_before_any_model_is_loaded(tmp_path, monkeypatch):
    """A judge that refuses (a wrong key) fails evaluate in seconds: before, every lm-eval
    task and all answers of every model ran first, hours on a real model."""
    from pathlib import Path

    import feinschliff.evaluate.stage as stage
    from feinschliff.artifacts import AdapterRef, DatasetRef, mark_complete, prepare_out
    from feinschliff.recipe_loader import load_recipe

    server, _, seen = _judge([(401, b'{"error": "invalid api key"}')], monkeypatch)
    loaded: list[str] = []
    monkeypatch.setattr(stage, "resolve_model", lambda name: loaded.append(name) or "/none")
    monkeypatch.setattr(stage, "run_tasks", lambda *a, **k: loaded.append("lm-eval") or {})
    demo = Path(__file__).resolve().parents[2] / "recipes" / "demo-de.yaml"
    url = base_url(server) + "/v1"
    recipe = load_recipe(
        demo, [f"evaluate.judge={{base_url: '{url}', model: m, api_key_env: JUDGE_KEY}}"]
    )
    train = tmp_path / "train"
    prepare_out(train, "k")
    (train / "adapter").mkdir()
    adapter = AdapterRef(path=str(train), sha256=mark_complete(train, stage="train", key="k"))
    data = tmp_path / "data"
    prepare_out(data, "d")
    (data / "sft.jsonl").write_text("")
    ref = DatasetRef(path=str(data), sha256=mark_complete(data, stage="ingest", key="d"))
    try:
        with pytest.raises(JudgeError, match="refused the request: HTTP 401"):
            stage.run_evaluate(recipe, adapter, tmp_path / "eval", data=ref)
    finally:
        server.shutdown()
    assert len(seen) == 1 and loaded == []
