"""The vLLM client's retry policy and error mapping. A real vLLM cannot be made to answer 503
or drop a connection on demand, so these use httpx.MockTransport at the HTTP boundary with the
response bodies vLLM 0.32 returns (shared FACTS 10.3.2); the happy paths run against a real
server in tests/integration/test_vllm_registry.py."""

from __future__ import annotations

import httpx
import pytest

from feinschliff.serving.vllm_client import VllmClient, VllmError
from feinschliff.specs.register import VllmServer


def client_for(handler, **kw) -> VllmClient:
    return VllmClient(
        VllmServer(url="http://vllm:8000"),
        transport=httpx.MockTransport(handler),
        backoff_s=0,
        **kw,
    )


def test_retries_transient_failures_then_succeeds():
    calls = []

    def handler(request):
        calls.append(request.url.path)
        if len(calls) == 1:
            raise httpx.ConnectError("refused")
        if len(calls) == 2:
            return httpx.Response(503, text="busy")
        return httpx.Response(200, text="Success: LoRA adapter 'a' added successfully.")

    client_for(handler, retries=3).load("a", "/adapters/a/v0001")
    assert calls == ["/v1/load_lora_adapter"] * 3


def test_gives_up_after_retries():
    def handler(request):
        raise httpx.ConnectError("refused")

    with pytest.raises(VllmError, match="ConnectError") as err:
        client_for(handler, retries=2).models()
    assert err.value.status is None


def test_load_errors_are_not_retried_and_carry_vllm_message():
    calls = []
    body = {
        "error": {
            "message": "LoRA rank 64 is greater than max_lora_rank 16.",
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
    }

    def handler(request):
        calls.append(1)
        return httpx.Response(500, json=body)

    with pytest.raises(VllmError, match="rank 64 is greater") as err:
        client_for(handler, retries=3).load("a", "/x")
    assert err.value.status == 500 and len(calls) == 1


def test_unload_missing_is_ok_and_api_key_is_sent(monkeypatch):
    monkeypatch.setenv("VLLM_KEY", "sk-test")
    seen = []

    def handler(request):
        seen.append(request.headers.get("authorization"))
        return httpx.Response(
            404, json={"error": {"message": "cannot be found", "type": "NotFoundError"}}
        )

    c = VllmClient(
        VllmServer(url="http://vllm:8000", api_key_env="VLLM_KEY"),
        transport=httpx.MockTransport(handler),
    )
    c.unload("gone")
    with pytest.raises(VllmError):
        c.unload("gone", missing_ok=False)
    assert seen == ["Bearer sk-test"] * 2
    assert "sk-test" not in repr(c._api_key)


def test_missing_api_key_env_is_an_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(VllmError, match="NO_SUCH_KEY"):
        VllmClient(VllmServer(url="http://vllm:8000", api_key_env="NO_SUCH_KEY"))


def test_completion_answered_by_another_model_is_an_error():
    def handler(request):
        return httpx.Response(200, json={"model": "base", "choices": [{"text": "x"}]})

    with pytest.raises(VllmError, match="answered by 'base'"):
        client_for(handler).complete("support", "Hallo")


@pytest.mark.parametrize("key_env", [None, "VLLM_KEY"])
def test_unauthorized_is_a_clear_error_without_the_key(monkeypatch, key_env):
    """vLLM's auth middleware answers 401 with {"error": "Unauthorized"} (a string, not the
    usual error object): not retried, and the message names the env var, never the key."""
    monkeypatch.setenv("VLLM_KEY", "sk-wrong-123")
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(401, json={"error": "Unauthorized"})

    client = VllmClient(
        VllmServer(url="http://vllm:8000", api_key_env=key_env),
        transport=httpx.MockTransport(handler),
        retries=3,
        backoff_s=0,
    )
    with pytest.raises(VllmError, match="401: Unauthorized") as err:
        client.load("a", "/x")
    assert err.value.status == 401 and len(calls) == 1
    hint = "rejected the API key in $VLLM_KEY" if key_env else "requires an API key"
    assert hint in str(err.value) and "sk-wrong-123" not in str(err.value)


@pytest.mark.parametrize(("loaded_from", "ok"), [("/a/v2-abc", True), ("/a/v1-old", False)])
def test_already_loaded_from_the_same_path_counts_as_loaded(loaded_from, ok):
    """A retried load whose first answer was lost meets vLLM's 400 "already loaded": that is
    success only when the name is loaded from the very path asked for."""
    msg = "The lora adapter 'a@v2' has already been loaded."
    body = {"error": {"message": msg, "type": "BadRequestError", "param": None, "code": 400}}

    def handler(request):
        if request.url.path == "/v1/models":
            cards = [{"id": "base", "root": "/m", "parent": None}]
            cards.append({"id": "a@v2", "root": loaded_from, "parent": "base"})
            return httpx.Response(200, json={"object": "list", "data": cards})
        return httpx.Response(400, json=body)

    client = client_for(handler)
    if ok:
        client.load("a@v2", "/a/v2-abc")
    else:
        with pytest.raises(VllmError, match="already been loaded"):
            client.load("a@v2", "/a/v2-abc")
