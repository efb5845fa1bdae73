"""A server or proxy that echoes the request's Authorization header in an error body: the
credentials must not reach the error message (and from it logs, manifest.json, the dataset
card, notifications). The Langfuse pull and the vLLM client quoted such bodies as they came;
the judge cut the body before redacting, so a key across the cut survived in part. The
echoing proxies are local stand-ins (a real proxy cannot be made to misbehave on demand)."""

from __future__ import annotations

import asyncio
import base64
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from feinschliff.redact import credentials_of, redact_response_text

PK, SK = "pk-lf-FAKEPUBLIC777", "sk-lf-FAKESECRET999"
B64 = base64.b64encode(f"{PK}:{SK}".encode()).decode()


class Echo(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        body = f"invalid header Authorization: {self.headers['Authorization']}".encode()
        self.send_response(400)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET  # noqa: N815


@pytest.fixture()
def echo_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_basic_auth_is_redacted_as_header_token_and_decoded_pair():
    request = httpx.Request("GET", "http://x/", headers={"Authorization": f"Basic {B64}"})
    assert set(credentials_of(request)) >= {f"Basic {B64}", B64, PK, SK}
    response = httpx.Response(400, text=f"echo: Basic {B64} user={PK} pw={SK}", request=request)
    said = redact_response_text(response)
    assert B64 not in said and PK not in said and SK not in said and "***" in said


def test_a_langfuse_pull_error_does_not_quote_the_keys(echo_url, tmp_path, monkeypatch):
    from feinschliff.ingest import run_ingest
    from feinschliff.recipe import FeedbackSpec

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", PK)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", SK)
    monkeypatch.setenv("LANGFUSE_BASE_URL", echo_url)
    spec = FeedbackSpec.model_validate(
        {"sources": [{"kind": "langfuse", "pull": {}}], "pii": {"mode": "off"}}
    )
    with pytest.raises(Exception) as failed:
        run_ingest(spec, tmp_path / "out")
    assert "400" in str(failed.value)
    written = [p.read_text() for p in (tmp_path / "out").rglob("*") if p.is_file()]
    for text in [str(failed.value), *written]:
        assert B64[:20] not in text and SK not in text


def test_a_vllm_error_does_not_quote_the_api_key(echo_url, monkeypatch):
    from feinschliff.serving.vllm_client import VllmClient, VllmError
    from feinschliff.specs.register import VllmServer

    monkeypatch.setenv("VLLM_TEST_KEY", "sk-vllm-SECRET-0123456789")
    server = VllmServer(url=echo_url, api_key_env="VLLM_TEST_KEY")
    with VllmClient(server, timeout_s=5, retries=0) as client, pytest.raises(VllmError) as failed:
        client.adapters()
    assert "sk-vllm-SECRET" not in str(failed.value) and "***" in str(failed.value)


def test_the_judge_redacts_before_it_cuts_the_body(monkeypatch):
    from feinschliff.evaluate.judge import JudgeClient, JudgeError
    from feinschliff.specs.evaluate import JudgeSpec

    key = "sk-live-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    monkeypatch.setenv("JUDGE_KEY", key)

    def echo(request: httpx.Request) -> httpx.Response:  # the key straddles character 300
        return httpx.Response(401, text="x" * 277 + " " + request.headers["authorization"])

    async def ask() -> str:
        spec = JudgeSpec(base_url="http://judge.invalid/v1", model="m", api_key_env="JUDGE_KEY")
        client = JudgeClient(spec)
        client._client = httpx.AsyncClient(
            base_url="http://judge.invalid/v1",
            headers=client._client.headers,
            transport=httpx.MockTransport(echo),
        )
        with pytest.raises(JudgeError) as failed:
            await client.complete("s", "u", None)
        return str(failed.value)

    said = asyncio.run(ask())
    assert key[:8] not in said


def test_an_argilla_pull_error_does_not_quote_the_api_key():
    """Argilla's SDK sends its key in X-Argilla-Api-Key; its errors quote the response."""
    from feinschliff.ingest.pull import PullFailed
    from feinschliff.ingest.pull_argilla import _argilla_errors

    key = "argilla.apikey-SECRET-0123456789"
    request = httpx.Request("GET", "http://a/api/v1/me", headers={"X-Argilla-Api-Key": key})
    response = httpx.Response(502, text=f"bad gateway; X-Argilla-Api-Key: {key}", request=request)
    with pytest.raises(PullFailed) as failed, _argilla_errors("http://a", "ARGILLA_API_KEY"):
        raise httpx.HTTPStatusError(f"502: {response.text}", request=request, response=response)
    assert key not in str(failed.value) and "***" in str(failed.value)


def test_a_vllm_error_cut_at_500_characters_keeps_no_part_of_the_key():
    from feinschliff.serving.vllm_client import _error_message

    key = "sk-" + "A1b2C3d4E5f6G7h8I9j0" * 2
    request = httpx.Request(
        "POST", "http://vllm:8000/v1/load_lora_adapter", headers={"Authorization": f"Bearer {key}"}
    )
    response = httpx.Response(502, text="x" * 490 + key + " <- echoed", request=request)
    assert key[:10] not in _error_message(response)
