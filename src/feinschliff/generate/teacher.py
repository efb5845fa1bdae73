"""The teacher as a distilabel LLM: cached, budgeted, retried, constrained requests.

``TeacherLLM`` talks to an OpenAI-compatible ``/chat/completions`` endpoint itself (httpx)
instead of wrapping distilabel's ``OpenAILLM``, because every request has to pass through the
run's ``RequestCache`` and ``Ledger`` (see ``ledger``), and JSON constraints must be sent the
way the endpoint understands them (OpenAI ``response_format`` or vLLM ``structured_outputs``;
strict ``response_format`` refuses string lengths, so they are left out there: ``strict_schema``).
A ``transformers`` teacher generates locally with the same cache and budget (no constraints).

Failure handling, per request:
- cache hit: answered from the cache, nothing sent;
- budget spent or teacher already failed: not sent, output ``None`` (the row is dropped and
  counted later), so a run stops cleanly without hammering the endpoint;
- connection error, timeout, 429, 5xx: retried with exponential backoff, waiting at least
  what a ``Retry-After`` header asks (up to ``MAX_RETRY_AFTER_S``); when the retries are used
  up the ledger records the outage and the run ends with that message;
- 400/413/422 (this prompt is invalid, e.g. too long): output ``None``, counted as rejected and
  not cached, so the next run asks again (the server's limits may have been raised meanwhile);
  the ledger keeps the first error and whether all were the same, so a run in which every
  request was refused alike (the request's shape, not a row) fails with that error;
- any other status (401, 403, 404: wrong key, model or URL): fatal at once;
- anything else raised (a 200 whose body is no chat completion, a transformers error of a local
  teacher): fatal at once, with the exception's type and message. distilabel would otherwise
  log it and emit ``None``, and the run would end complete but short.

distilabel validates ``agenerate``'s signature, so it lists its parameters explicitly (a
``**kwargs`` signature fails validation, FACTS section 2).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import threading
from pathlib import Path
from typing import Any

from distilabel.models.llms.base import AsyncLLM
from distilabel.models.llms.utils import prepare_output
from distilabel.typing import FormattedInput, GenerateOutput
from pydantic import PrivateAttr

from feinschliff.generate.ledger import Ledger, RequestCache, request_key
from feinschliff.generate.templates import mark_surrogates, strict_schema
from feinschliff.models import model_fingerprint

RETRYABLE = {408, 409, 425, 429}
ROW_ERRORS = {400, 413, 422}


class TeacherLLM(AsyncLLM):
    kind: str = "openai"
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    constrain: str = "response_format"
    timeout_s: float = 120.0
    dtype: str = "float32"
    cache_path: str
    ledger_path: str
    max_requests: int | None = None
    max_tokens: int | None = None
    retries: int = 3
    backoff_s: float = 1.0
    concurrency: int = 8

    _cache: Any = PrivateAttr(None)
    _ledger: Any = PrivateAttr(None)
    _client: Any = PrivateAttr(None)
    _gate: Any = PrivateAttr(None)
    _local: Any = PrivateAttr(None)
    _local_lock: Any = PrivateAttr(None)
    _fingerprint: Any = PrivateAttr(None)

    @property
    def model_name(self) -> str:
        return self.model

    def load(self) -> None:
        super().load()
        self._cache = RequestCache(Path(self.cache_path))
        self._ledger = Ledger(Path(self.ledger_path), self.max_requests, self.max_tokens)
        self._local_lock = threading.Lock()  # created here: steps are pickled before load()

    def unload(self) -> None:
        if self._client is not None:
            self.event_loop.run_until_complete(self._client.aclose())
            self._client = None
        super().unload()

    async def agenerate(  # type: ignore[override]
        self,
        input: FormattedInput,
        num_generations: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 0.7,
        top_p: float = 1.0,
        seed: int | None = None,
        constraint: dict[str, Any] | None = None,
    ) -> GenerateOutput:
        """Answer one chat input ``num_generations`` times.

        Args:
            input: the chat messages.
            num_generations: answers wanted (one request with ``n``).
            max_new_tokens: completion token limit.
            temperature: sampling temperature.
            top_p: nucleus sampling mass.
            seed: base seed; the request seed adds a hash of the messages.
            constraint: ``{"json": schema}`` or ``{"regex": pattern}`` for every answer.
        """
        try:
            body = self.request_body(
                list(input), num_generations, max_new_tokens, temperature, top_p, seed, constraint
            )
            return _output(await self._answer(body))
        except Exception as exc:  # distilabel would log it and emit None: a silent drop
            self._fail(exc)
            return _output(_empty(num_generations, None))

    async def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        key = request_key(self._cache_identity(body))
        response = self._cache.get(key)
        hit = response is not None
        reserved = 0
        if response is None:
            reserved = _token_estimate(body)
            if self._ledger.reserve(reserved) is not None:
                return _empty(body["n"], None)
            if self._gate is None:
                self._gate = asyncio.Semaphore(self.concurrency)
            try:
                async with self._gate:
                    call = self._local_call if self.kind == "transformers" else self._call
                    response = await call(body)
            except Exception as exc:
                self._fail(exc)
                response = None
            if response is None:  # outage or fatal error, recorded in the ledger
                self._ledger.record(
                    cache_hit=False, tokens=0, truncated=0, rejected=0, reserved=reserved
                )
                return _empty(body["n"], None)
            # a lone surrogate ("\ud83d" in the JSON body) is no UTF-8: it would fail the cache
            # write and distilabel's writer; templates.BROKEN marks the text broken (dropped later)
            response["generations"] = [g and mark_surrogates(g) for g in response["generations"]]
            if "rejected" not in response["finish_reasons"]:  # a rejection is asked again
                self._cache.keep(key, response, self._ledger)  # full disk: fails the run
        reasons = response["finish_reasons"]
        self._ledger.record(
            cache_hit=hit,
            tokens=0 if hit else response["input_tokens"] + response["output_tokens"],
            truncated=reasons.count("length"),
            rejected=int("rejected" in reasons),
            reserved=reserved,
            rejection=response.get("error"),
        )
        return response

    def _cache_identity(self, body: dict[str, Any]) -> dict[str, Any]:
        """What a cached answer depends on: the request, and for a local model its dtype
        (bfloat16 samples other answers than float32), ``stops`` (retires the replies cached when
        eot-style stops were taken as cut off) and its folder's content without mtimes
        (``models.model_fingerprint``: another model in that folder is asked anew, a copy not)."""
        if self.kind != "transformers":
            return body
        if self._fingerprint is None:  # once per process: the folder does not change mid-run
            self._fingerprint = model_fingerprint(self.model, mtimes=False) or "none"
        local = {"dtype": self.dtype, "stops": "generation_config", "model": self._fingerprint}
        return {**body, "local": local}

    def _fail(self, exc: Exception) -> None:
        """Record an unexpected exception as the run's teacher failure (never the API key)."""
        self._give_up(f"teacher {self.model} raised {type(exc).__name__}: {exc}")

    def _give_up(self, message: str) -> None:
        """The run's teacher failure, as the ledger (and so the error and the log) keep it."""
        self._ledger.fail(self._redact(message)[:600])

    def _redact(self, text: str) -> str:
        """``text`` without the API key: an endpoint may echo it in an error body (a 401's
        "Incorrect API key provided: sk-...", a proxy's), which goes into the run's error."""
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return text.replace(key, "***") if key else text

    def request_body(
        self,
        messages: list[dict[str, str]],
        n: int,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        constraint: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """The exact request sent (and the request cache's key)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "n": n,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if seed is not None:
            digest = hashlib.sha256(json.dumps(messages, ensure_ascii=False).encode()).digest()
            body["seed"] = (seed + int.from_bytes(digest[:4], "big")) % 2**31
        if constraint is not None and self.kind == "openai" and self.constrain != "off":
            if self.constrain == "vllm":
                body["structured_outputs"] = constraint
            elif "json" in constraint:
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "feinschliff",
                        "schema": strict_schema(constraint["json"]),
                        "strict": True,
                    },
                }
            else:
                raise ValueError(f"{sorted(constraint)} constraints need structured_output: vllm")
        return body

    # ------------------------------------------------------------------ HTTP

    async def _call(self, body: dict[str, Any]) -> dict[str, Any] | None:
        import httpx

        if self._client is None:
            headers = {}
            if self.api_key_env:
                key = os.environ.get(self.api_key_env)
                if not key:
                    self._give_up(
                        f"environment variable {self.api_key_env} (teacher API key) is not set"
                    )
                    return None
                headers["Authorization"] = f"Bearer {key}"
            self._client = httpx.AsyncClient(timeout=self.timeout_s, headers=headers)
        url = f"{(self.base_url or '').rstrip('/')}/chat/completions"
        error, asked = "", 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1)
                # a 429/503 that says when to come back: retries spent sooner fail the run
                await asyncio.sleep(max(delay * random.uniform(1.0, 1.25), asked))
            try:
                r = await self._client.post(url, json=body)
            except httpx.HTTPError as exc:
                error, asked = self._redact(f"{type(exc).__name__}: {exc}".rstrip(": ")), 0.0
                continue
            if r.status_code == 200:
                try:
                    return _parse_completion(r.json(), body["n"])
                except (ValueError, TypeError, AttributeError) as exc:
                    self._give_up(
                        f"teacher {url} answered HTTP 200 without a chat completion "
                        f"({type(exc).__name__}: {exc}): {self._redact(r.text)[:300]}"
                    )
                    return None
            error = f"HTTP {r.status_code}: {self._redact(r.text)[:300]}"
            asked = retry_after(r.headers.get("retry-after"))
            if r.status_code in ROW_ERRORS:  # this prompt is invalid; not cached (see agenerate)
                self._logger.warning(f"teacher rejected a request ({error})")
                return {**_empty(body["n"], "rejected"), "error": error}
            if r.status_code not in RETRYABLE and r.status_code < 500:
                self._give_up(f"teacher {url} refused the request: {error}")
                return None
        self._give_up(f"teacher {url} unavailable after {self.retries + 1} attempt(s): {error}")
        return None

    # ------------------------------------------------------------------ local

    async def _local_call(self, body: dict[str, Any]) -> dict[str, Any] | None:
        # In a thread, so the event loop stays free; one generate() at a time (a lock): the
        # model is shared and CPU-bound.
        return await asyncio.to_thread(self._local_generate, body)

    def _local_generate(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._local_lock:
            return self._local_generate_locked(body)

    def _local_generate_locked(self, body: dict[str, Any]) -> dict[str, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self._local is None:
            tok = AutoTokenizer.from_pretrained(self.model)
            model = AutoModelForCausalLM.from_pretrained(
                self.model, dtype=getattr(torch, self.dtype)
            )
            self._local = (tok, model.eval())
        tok, model = self._local
        ids = tok.apply_chat_template(
            body["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        torch.manual_seed(body.get("seed", 0))
        sample = body["temperature"] > 0
        with torch.no_grad():
            out = model.generate(
                **ids,
                max_new_tokens=body["max_tokens"],
                do_sample=sample,
                temperature=body["temperature"] if sample else None,
                top_p=body["top_p"] if sample else None,
                num_return_sequences=body["n"],
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
            )
        n_in = ids["input_ids"].shape[1]
        ends = stop_token_ids(model.generation_config.eos_token_id, tok.eos_token_id)
        new = [_until_stop(seq[n_in:].tolist(), ends) for seq in out]
        # Like the OpenAI API: "stop" when the model ended the text, "length" when cut off.
        return {
            "generations": [tok.decode(t, skip_special_tokens=True) for t, _ in new],
            "finish_reasons": ["stop" if stopped else "length" for _, stopped in new],
            "input_tokens": int(n_in),
            "output_tokens": sum(len(t) for t, _ in new),
        }


MAX_RETRY_AFTER_S = 120.0


def retry_after(value: str | None) -> float:
    """Seconds a ``Retry-After`` header asks to wait (its delay-seconds form; an HTTP date or
    garbage: 0), at most ``MAX_RETRY_AFTER_S``."""
    try:
        seconds = float(value) if value else 0.0
    except ValueError:
        return 0.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S) if seconds == seconds else 0.0


def stop_token_ids(configured: int | list[int] | None, tokenizer_eos: int | None) -> set[int]:
    """Every token ``generate`` stops on: the generation config's eos ids (Llama 3 and Qwen
    list several, e.g. ``<|eot_id|>`` besides ``<|end_of_text|>``) and the tokenizer's."""
    ids = configured if isinstance(configured, list) else [configured]
    return {i for i in (*ids, tokenizer_eos) if i is not None}


def _until_stop(tokens: list[int], stops: set[int]) -> tuple[list[int], bool]:
    """The tokens up to and including the first stop token (padding after it dropped), and
    whether there was one."""
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[: i + 1], True
    return tokens, False


def _parse_completion(data: dict[str, Any], n: int) -> dict[str, Any]:
    choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
    if len(choices) != n:
        hint = (
            " (the endpoint ignores the request's `n`, as TGI does: answers to rate need an "
            "endpoint that returns n choices per request, e.g. vLLM or OpenAI)"
            if len(choices) == 1 and n > 1
            else ""
        )
        raise ValueError(f"{len(choices)} choice(s) for n={n}{hint}")
    usage = data.get("usage") or {}
    return {
        "generations": [(c.get("message") or {}).get("content") for c in choices],
        "finish_reasons": [c.get("finish_reason") for c in choices],
        "input_tokens": int(usage.get("prompt_tokens") or 0),
        "output_tokens": int(usage.get("completion_tokens") or 0),
    }


def _token_estimate(body: dict[str, Any]) -> int:
    """What one request may cost, reserved against the token budget: its prompt (estimated at 3
    characters a token, plus the chat template's few tokens per message) and every completion
    at its limit."""
    prompt = sum(len(str(m.get("content") or "")) // 3 + 4 for m in body["messages"])
    return prompt + body["max_tokens"] * body["n"]


def _empty(n: int, reason: str | None) -> dict[str, Any]:
    return {
        "generations": [None] * n,
        "finish_reasons": [reason] * n,
        "input_tokens": 0,
        "output_tokens": 0,
    }


def _output(response: dict[str, Any]) -> GenerateOutput:
    gens = response["generations"]
    # A reply cut at the token limit is not a usable answer (and truncated JSON never parses).
    gens = [
        g if r != "length" else None for g, r in zip(gens, response["finish_reasons"], strict=True)
    ]
    return prepare_output(
        gens,
        input_tokens=[response["input_tokens"]] * len(gens),
        output_tokens=[response["output_tokens"]] * len(gens),
    )
