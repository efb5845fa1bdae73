"""A small client for vLLM's adapter routes: list, load, unload, and a verifying completion.

Routes and error shapes are those of vLLM 0.32/0.33 (shared FACTS 10.3.2): ``/v1/load_lora_adapter``
answers 200 with plain text, errors as ``{"error": {"message", "type", ...}}``. Connection errors,
timeouts and 429/502/503/504 are retried with exponential backoff; a 4xx or a 500 (vLLM's answer
to an adapter it cannot load) is not, because repeating it cannot succeed.

vLLM adds the load/unload routes only when started with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=true``
(``vllm/entrypoints/serve/lora/api_router.py``: ``attach_router`` returns early otherwise). Without
them it answers FastAPI's route-not-found, 404 ``{"detail": "Not Found"}``, told apart by its body
from vLLM's own 404 for unloading an unknown adapter (``{"error": {"type": "NotFoundError", ...}}``)
and raised as :class:`RuntimeLoraUpdatingOff`, which ``unload(missing_ok=True)`` does not swallow.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import httpx
from pydantic import SecretStr

from feinschliff.redact import redact_response_text
from feinschliff.specs.register import VllmServer

log = logging.getLogger(__name__)
RETRY_STATUS = {429, 502, 503, 504}
ADAPTER_ROUTES = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")
RUNTIME_UPDATING_OFF = (
    "404 Not Found: the server has no {path} route, so it was probably started without "
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=true (vLLM adds the adapter load/unload routes only then). "
    "Restart it with that variable set; `feinschliff serve-config RECIPE` prints a start command "
    "that sets it"
)


class VllmError(RuntimeError):
    """A vLLM request failed; ``status`` is the HTTP status (None: no answer)."""

    def __init__(self, url: str, message: str, status: int | None = None):
        self.status = status
        super().__init__(f"{url}: {message}")


class RuntimeLoraUpdatingOff(VllmError):
    """The server has no adapter load/unload routes (started without runtime LoRA updating)."""


class VllmClient:
    """One vLLM replica. The API key is read from the named env var and held as a SecretStr."""

    def __init__(
        self,
        server: VllmServer,
        *,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ):
        self.url = server.url
        self.retries = retries
        self.backoff_s = backoff_s
        self._key_env = server.api_key_env
        self._api_key = _read_key(server.api_key_env)
        headers = {}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        self._http = httpx.Client(
            base_url=server.url, timeout=timeout_s, headers=headers, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VllmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def models(self) -> list[dict[str, Any]]:
        """Every model card: the base model (parent None) and each loaded adapter."""
        return self._request("GET", "/v1/models").json()["data"]

    def adapters(self) -> dict[str, str]:
        """Loaded adapter name -> the path it was loaded from (the card's ``root``)."""
        return {m["id"]: m["root"] for m in self.models() if m.get("parent")}

    def base_model_root(self) -> str:
        """The server's ``--model`` string (the base card's ``root``)."""
        return next(m["root"] for m in self.models() if not m.get("parent"))

    def load(self, name: str, path: str, *, inplace: bool = False) -> None:
        body = {"lora_name": name, "lora_path": path, "load_inplace": inplace}
        try:
            self._request("POST", "/v1/load_lora_adapter", json=body)
        except VllmError as exc:
            # A retry after a lost answer meets "already loaded" (400): done if the name is
            # loaded from this very path (paths carry the content hash, so same path = same weights).
            if exc.status != 400 or inplace or self.adapters().get(name) != path:
                raise
            log.info("%s: %s was already loaded from %s", self.url, name, path)
            return
        log.info("%s: loaded %s from %s%s", self.url, name, path, " (in place)" if inplace else "")

    def unload(self, name: str, *, missing_ok: bool = True) -> None:
        try:
            self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
            log.info("%s: unloaded %s", self.url, name)
        except VllmError as exc:
            # vLLM's 404 for an unknown adapter; not a 404 for the route itself
            if isinstance(exc, RuntimeLoraUpdatingOff) or not (missing_ok and exc.status == 404):
                raise

    def complete(self, model: str, prompt: str, *, max_tokens: int = 16) -> str:
        """Greedy completion; returns the generated text."""
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
        data = self._request("POST", "/v1/completions", json=body).json()
        if data.get("model") != model:
            raise VllmError(self.url, f"asked for {model!r}, answered by {data.get('model')!r}")
        return data["choices"][0]["text"]

    def chat(self, model: str, prompt: str, *, max_tokens: int = 64) -> str:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
        }
        data = self._request("POST", "/v1/chat/completions", json=body).json()
        return data["choices"][0]["message"]["content"]

    def _auth_hint(self) -> str:
        if self._key_env is None:
            return " (the server requires an API key: set api_key_env for this server)"
        return f" (the server rejected the API key in ${self._key_env})"

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                resp = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise VllmError(self.url, f"{method} {path}: {exc!r}") from exc
            else:
                if resp.status_code < 400:
                    return resp
                if resp.status_code == 404 and path in ADAPTER_ROUTES and _route_missing(resp):
                    message = RUNTIME_UPDATING_OFF.format(path=path)
                    raise RuntimeLoraUpdatingOff(self.url, f"{method} {path}: {message}", 404)
                if resp.status_code not in RETRY_STATUS or attempt == self.retries:
                    message = f"{method} {path}: {_error_message(resp)}"
                    if resp.status_code == 401:
                        message += self._auth_hint()
                    raise VllmError(self.url, message, resp.status_code)
            delay = self.backoff_s * 2**attempt
            log.warning("%s %s%s failed, retry in %.1f s", method, self.url, path, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")


def _read_key(env: str | None) -> SecretStr | None:
    if env is None:
        return None
    value = os.environ.get(env)
    if not value:
        raise VllmError("-", f"environment variable {env} (the vLLM API key) is not set")
    return SecretStr(value)


def _route_missing(resp: httpx.Response) -> bool:
    """FastAPI's answer for a path no route matches: 404 ``{"detail": "Not Found"}``."""
    try:
        body = resp.json()
    except ValueError:
        return False
    return body == {"detail": "Not Found"}


def _error_message(resp: httpx.Response) -> str:
    """vLLM's ``{"error": {"type", "message"}}``, or its auth middleware's plain
    ``{"error": "Unauthorized"}`` (401), or whatever text a proxy in front sent (without the
    API key, which a proxy may echo: redacted before it is cut, so no part of it survives)."""

    def quoted(text: str) -> str:
        return redact_response_text(resp, text)[:500]

    try:
        body = resp.json()
    except ValueError:
        return f"{resp.status_code}: {quoted(resp.text)}"
    err = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, dict):
        return f"{resp.status_code} {err.get('type', '')}: {quoted(str(err.get('message', resp.text)))}"
    return f"{resp.status_code}: {quoted(str(err))}"
