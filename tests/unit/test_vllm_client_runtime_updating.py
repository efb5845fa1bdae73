"""A vLLM started without ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=true`` has no adapter routes: the
client says so instead of passing on a bare 404 (and ``unload`` does not take that 404 for
"adapter already gone").

The server is a local HTTP stub (tests/http_stub.py), not a real vLLM: a real vLLM cannot run in
the unit suite (`make unit` runs without vLLM and a model), and the bodies are what vLLM 0.32
sends, read from its source and checked against its FastAPI app in its venv:
``vllm/entrypoints/serve/lora/api_router.py`` adds ``/v1/load_lora_adapter`` and
``/v1/unload_lora_adapter`` only when the variable is set, so without it Starlette's router
raises its 404 and FastAPI's default handler answers ``{"detail":"Not Found"}`` (vLLM's own
HTTPException handler is registered for FastAPI's subclass only); with the routes, unloading an
unknown adapter answers 404 ``{"error": {..., "type": "NotFoundError", "code": 404}}``
(``OpenAIServingModels._check_unload_lora_adapter_request``). A real server runs these routes in
tests/integration/test_vllm_registry.py.
"""

from __future__ import annotations

import json

import pytest

from feinschliff import registry
from feinschliff.serving import deploy
from feinschliff.serving.vllm_client import RuntimeLoraUpdatingOff, VllmClient, VllmError
from feinschliff.specs.register import VllmServer, VllmSpec
from tests.http_stub import StubHandler, base_url, serve
from tests.unit.adapter_factory import make_base, make_train_output, target_for

ROUTE_NOT_FOUND = b'{"detail":"Not Found"}'  # FastAPI's body, byte for byte
ADAPTER_ROUTES = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")
HINT = "VLLM_ALLOW_RUNTIME_LORA_UPDATING=true"


def vllm_stub(model: str, *, runtime_updating: bool):
    """A vLLM replica serving ``model`` and no adapters, with or without the adapter routes."""
    calls: list[str] = []

    class Handler(StubHandler):
        def do_GET(self):
            calls.append(self.path)
            if self.path == "/v1/models":
                card = {"id": model, "root": model, "parent": None}
                self.respond(200, json.dumps({"object": "list", "data": [card]}).encode())
            else:
                self.respond(404, ROUTE_NOT_FOUND)

        def do_POST(self):
            calls.append(self.path)
            body = json.loads(self.read_body() or b"{}")
            if self.path not in ADAPTER_ROUTES or not runtime_updating:
                self.respond(404, ROUTE_NOT_FOUND)
            elif self.path == "/v1/unload_lora_adapter":
                message = f"The lora adapter '{body['lora_name']}' cannot be found."
                err = {"message": message, "type": "NotFoundError", "param": None, "code": 404}
                self.respond(404, json.dumps({"error": err}).encode())
            else:
                self.respond(200, b"Success", "text/plain")

    server = serve(Handler)
    return server, calls


@pytest.fixture()
def off():
    server, calls = vllm_stub("base", runtime_updating=False)
    yield base_url(server), calls
    server.shutdown()


@pytest.fixture()
def on():
    server, calls = vllm_stub("base", runtime_updating=True)
    yield base_url(server), calls
    server.shutdown()


def client(url: str) -> VllmClient:
    return VllmClient(VllmServer(url=url), retries=3, backoff_s=0)


def test_load_without_the_routes_names_the_variable_and_is_not_retried(off):
    url, calls = off
    with client(url) as c, pytest.raises(RuntimeLoraUpdatingOff) as err:
        c.load("support-de", "/adapters/support-de/v0001-abc")
    text = str(err.value)
    assert HINT in text and "feinschliff serve-config" in text, text
    assert "/v1/load_lora_adapter" in text and err.value.status == 404
    assert isinstance(err.value, VllmError)  # callers catching VllmError still catch it
    assert calls == ["/v1/load_lora_adapter"]


def test_unload_without_the_routes_is_an_error_not_a_missing_adapter(off):
    """The old client took this 404 for "already unloaded" and reported success."""
    url, calls = off
    with client(url) as c, pytest.raises(RuntimeLoraUpdatingOff, match=HINT):
        c.unload("support-de")  # missing_ok=True by default
    assert calls == ["/v1/unload_lora_adapter"]


def test_unloading_an_unknown_adapter_is_still_tolerated(on):
    """vLLM's own 404 (the routes exist, the adapter does not) keeps its meaning."""
    url, _ = on
    with client(url) as c:
        c.unload("support-de")
        with pytest.raises(VllmError, match="cannot be found") as err:
            c.unload("support-de", missing_ok=False)
    assert not isinstance(err.value, RuntimeLoraUpdatingOff) and HINT not in str(err.value)


def test_other_404s_are_not_blamed_on_the_variable(off):
    """Only the two adapter routes depend on it; a 404 elsewhere stays a plain 404."""
    url, _ = off
    with client(url) as c, pytest.raises(VllmError) as err:
        c.complete("support-de", "Hallo")
    assert not isinstance(err.value, RuntimeLoraUpdatingOff) and HINT not in str(err.value)
    assert err.value.status == 404


def test_a_promotion_reports_it_and_moves_nothing(tmp_path, monkeypatch):
    """What the user sees: the promotion fails with the hint, production is not moved."""
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    base = make_base(tmp_path / "base")
    root = tmp_path / "reg"
    out = make_train_output(tmp_path / "out", str(base))
    version = registry.register_adapter(root, "s", out, {}, target=target_for(base))
    server, calls = vllm_stub(str(base), runtime_updating=False)
    try:
        spec = VllmSpec(
            servers=[{"url": base_url(server)}],
            model=str(base),
            adapter_dir=str(tmp_path / "srv"),
            retries=0,
        )
        with pytest.raises(deploy.DeployError, match=HINT):
            deploy.promote_live(root, "s", version, spec, target_for(base), why="test")
    finally:
        server.shutdown()
    assert registry.read_aliases(root, "s").get("production") is None
    assert "/v1/load_lora_adapter" in calls
