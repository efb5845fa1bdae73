"""The teacher LLM: request cache, budget, retries and outage handling, constrained bodies.

The HTTP endpoint is replaced by ``httpx.MockTransport``: a teacher is a remote (often
third-party) API, and these tests must not open sockets. The real endpoint is exercised in
tests/integration/test_generate_vllm.py against a real vLLM.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from feinschliff.generate.ledger import Ledger, RequestCache, request_key
from feinschliff.generate.teacher import TeacherLLM

MSGS = [{"role": "user", "content": "Wie melde ich den Zählerstand?"}]


def _completion(texts, finish="stop", tokens=(10, 5)):
    return {
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": finish}
            for i, t in enumerate(texts)
        ],
        "usage": {"prompt_tokens": tokens[0], "completion_tokens": tokens[1]},
    }


def _llm(tmp_path: Path, handler=None, **kw) -> TeacherLLM:
    llm = TeacherLLM(
        model="teacher",
        base_url="http://teacher.invalid/v1",
        cache_path=str(tmp_path / "requests.jsonl"),
        ledger_path=str(tmp_path / "ledger.json"),
        backoff_s=0.0,
        **kw,
    )
    llm.load()
    Ledger(Path(llm.ledger_path), None, None).reset()
    if handler is not None:
        llm._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return llm


def _ask(llm: TeacherLLM, n: int = 1, **kw):
    return asyncio.run(llm.agenerate(MSGS, num_generations=n, max_new_tokens=32, seed=1, **kw))


def test_reply_is_cached_and_a_second_ask_sends_nothing(tmp_path):
    calls = []

    def handler(request):
        calls.append(json.loads(request.content))
        return httpx.Response(200, json=_completion(["Im Kundenportal.", "Per Karte."]))

    out = _ask(_llm(tmp_path, handler), n=2)
    assert out["generations"] == ["Im Kundenportal.", "Per Karte."]
    assert calls[0]["n"] == 2 and calls[0]["messages"] == MSGS

    fresh = _llm(tmp_path, lambda r: pytest.fail("a cached request was sent again"))
    assert _ask(fresh, n=2)["generations"] == ["Im Kundenportal.", "Per Karte."]
    state = Ledger(tmp_path / "ledger.json", None, None).read()
    assert (state["requests"], state["cache_hits"]) == (0, 1)


def test_budget_refuses_requests_once_spent(tmp_path):
    sent = []

    def handler(request):
        sent.append(1)
        return httpx.Response(200, json=_completion(["ok"]))

    llm = _llm(tmp_path, handler, max_requests=1)
    assert _ask(llm)["generations"] == ["ok"]
    assert _ask(llm, temperature=0.1)["generations"] == [None]
    state = Ledger(tmp_path / "ledger.json", 1, None).read()
    assert len(sent) == 1
    assert state["budget_exhausted"] == "budget: max_requests=1 reached"
    assert state["refused"] == 1 and state["failed"] is None


def test_token_budget_counts_prompt_and_completion(tmp_path):
    llm = _llm(
        tmp_path,
        lambda r: httpx.Response(200, json=_completion(["ok"], tokens=(30, 20))),
        max_tokens=50,
    )
    _ask(llm)
    assert _ask(llm, temperature=0.2)["generations"] == [None]
    assert Ledger(tmp_path / "ledger.json", None, 50).read()["tokens"] == 50


def test_outage_is_retried_then_fails_the_run_and_later_requests_are_not_sent(tmp_path):
    attempts = []

    def handler(request):
        attempts.append(1)
        return httpx.Response(503, text="upstream down")

    llm = _llm(tmp_path, handler, retries=2)
    assert _ask(llm)["generations"] == [None]
    assert len(attempts) == 3
    failed = Ledger(tmp_path / "ledger.json", None, None).read()["failed"]
    assert "unavailable after 3 attempt(s): HTTP 503" in failed
    assert _ask(llm, temperature=0.3)["generations"] == [None]
    assert len(attempts) == 3, "a request was sent after the teacher had failed"


def test_connection_error_then_success_is_retried(tmp_path):
    attempts = []

    def handler(request):
        attempts.append(1)
        if len(attempts) == 1:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json=_completion(["wieder da"]))

    assert _ask(_llm(tmp_path, handler, retries=1))["generations"] == ["wieder da"]


def test_invalid_prompt_drops_the_row_but_not_the_run(tmp_path):
    llm = _llm(tmp_path, lambda r: httpx.Response(400, text="prompt too long"))
    assert _ask(llm)["generations"] == [None]
    state = Ledger(tmp_path / "ledger.json", None, None).read()
    assert state["failed"] is None and state["rejected"] == 1


def test_wrong_key_or_model_fails_at_once(tmp_path):
    attempts = []

    def handler(request):
        attempts.append(1)
        return httpx.Response(401, text="bad key")

    _ask(_llm(tmp_path, handler, retries=3))
    assert len(attempts) == 1
    assert "HTTP 401" in Ledger(tmp_path / "ledger.json", None, None).read()["failed"]


def test_reply_cut_at_token_limit_is_not_an_answer(tmp_path):
    llm = _llm(tmp_path, lambda r: httpx.Response(200, json=_completion(["abgeschnit"], "length")))
    assert _ask(llm)["generations"] == [None]
    assert Ledger(tmp_path / "ledger.json", None, None).read()["truncated"] == 1


def test_api_key_comes_from_the_named_environment_variable(tmp_path, monkeypatch):
    seen = []

    def handler(request):
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json=_completion(["ok"]))

    monkeypatch.setenv("TEACHER_KEY", "sk-test")
    llm = _llm(tmp_path, None, api_key_env="TEACHER_KEY")
    transport = httpx.MockTransport(handler)
    original = httpx.AsyncClient

    def client(**kw):
        return original(transport=transport, **kw)

    monkeypatch.setattr(httpx, "AsyncClient", client)
    _ask(llm)
    assert seen == ["Bearer sk-test"]
    assert "sk-test" not in (tmp_path / "requests.jsonl").read_text()


def test_missing_api_key_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.delenv("TEACHER_KEY", raising=False)
    _ask(_llm(tmp_path, None, api_key_env="TEACHER_KEY"))
    failed = Ledger(tmp_path / "ledger.json", None, None).read()["failed"]
    assert "TEACHER_KEY" in failed and "not set" in failed


def test_constraints_are_sent_the_way_the_endpoint_understands_them(tmp_path):
    schema = {"type": "object"}
    rf = _llm(tmp_path).request_body(MSGS, 1, 8, 0.7, 1.0, 3, {"json": schema})
    assert rf["response_format"]["json_schema"]["schema"] == schema
    assert "structured_outputs" not in rf
    vllm = _llm(tmp_path, constrain="vllm").request_body(MSGS, 1, 8, 0.7, 1.0, 3, {"regex": "a+"})
    assert vllm["structured_outputs"] == {"regex": "a+"}
    off = _llm(tmp_path, constrain="off").request_body(MSGS, 1, 8, 0.7, 1.0, 3, {"json": schema})
    assert "response_format" not in off and "structured_outputs" not in off
    with pytest.raises(ValueError, match="structured_output: vllm"):
        _llm(tmp_path).request_body(MSGS, 1, 8, 0.7, 1.0, 3, {"regex": "a+"})


def test_request_seed_differs_per_prompt_and_is_stable(tmp_path):
    llm = _llm(tmp_path)
    a = llm.request_body(MSGS, 1, 8, 0.7, 1.0, 0, None)
    b = llm.request_body([{"role": "user", "content": "anders"}], 1, 8, 0.7, 1.0, 0, None)
    assert a["seed"] != b["seed"]
    assert a == llm.request_body(MSGS, 1, 8, 0.7, 1.0, 0, None)
    assert request_key(a) != request_key(b)


def test_request_cache_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "requests.jsonl"
    cache = RequestCache(path)
    cache.put("k1", {"generations": ["a"]})
    with path.open("a") as f:
        f.write('{"key": "k2", "respo')
    reloaded = RequestCache(path)
    assert reloaded.get("k1") == {"generations": ["a"]} and reloaded.get("k2") is None
    assert len(reloaded) == 1


def test_rejected_request_is_not_cached_and_is_asked_again_next_run(tmp_path):
    status = {"code": 400}

    def handler(request):
        if status["code"] == 400:
            return httpx.Response(400, text="maximum context length is 2048 tokens")
        return httpx.Response(200, json=_completion(["Im Kundenportal."]))

    assert _ask(_llm(tmp_path, handler))["generations"] == [None]
    status["code"] = 200  # the server now runs with a longer context
    assert _ask(_llm(tmp_path, handler))["generations"] == ["Im Kundenportal."]
    state = Ledger(tmp_path / "ledger.json", None, None).read()
    assert (state["requests"], state["cache_hits"], state["rejected"]) == (1, 0, 0)


def test_a_200_without_a_chat_completion_fails_the_run_clearly(tmp_path):
    sent = []

    def handler(request):
        sent.append(1)
        return httpx.Response(200, text="<html>502 Bad Gateway</html>")

    llm = _llm(tmp_path, handler)
    assert _ask(llm)["generations"] == [None]
    failed = Ledger(tmp_path / "ledger.json", None, None).read()["failed"]
    assert "HTTP 200 without a chat completion" in failed and "502 Bad Gateway" in failed
    assert _ask(llm, temperature=0.3)["generations"] == [None] and len(sent) == 1


def test_any_exception_of_the_teacher_fails_the_run_instead_of_dropping_rows(tmp_path):
    llm = _llm(tmp_path, None, kind="transformers", constrain="off")

    def greedy(body):
        raise ValueError("Greedy methods do not support `num_return_sequences` != 1")

    llm._local_generate = greedy  # what transformers raises for temperature 0 and n=2
    assert _ask(llm, n=2)["generations"] == [None, None]
    state = Ledger(tmp_path / "ledger.json", None, None).read()
    assert state["failed"] == (
        "teacher teacher raised ValueError: Greedy methods do not support "
        "`num_return_sequences` != 1"
    )
    assert state["reserved_tokens"] == 0


def test_an_exception_message_never_carries_the_api_key(tmp_path, monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", "sk-secret-123")

    def handler(request):
        raise RuntimeError(f"proxy echoed {request.headers['authorization']}")

    llm = _llm(tmp_path, None, api_key_env="TEACHER_KEY")
    transport = httpx.MockTransport(handler)
    original = httpx.AsyncClient
    monkeypatch.setattr(httpx, "AsyncClient", lambda **kw: original(transport=transport, **kw))
    _ask(llm)
    failed = Ledger(tmp_path / "ledger.json", None, None).read()["failed"]
    assert "RuntimeError: proxy echoed Bearer ***" in failed and "sk-secret" not in failed


def test_concurrent_requests_reserve_tokens_so_a_batch_cannot_overshoot_the_budget(tmp_path):
    sent = []

    def handler(request):
        sent.append(1)
        return httpx.Response(200, json=_completion(["ok"], tokens=(10, 32)))

    # each request reserves 6 prompt + 32 completion tokens: two fit into 100, not three
    llm = _llm(tmp_path, handler, max_tokens=100)

    async def batch():
        return await asyncio.gather(
            *(
                llm.agenerate(
                    [{"role": "user", "content": f"Frage {i}"}], max_new_tokens=32, seed=1
                )
                for i in range(8)
            )
        )

    outputs = asyncio.run(batch())
    state = Ledger(tmp_path / "ledger.json", None, None).read()
    assert len(sent) == 2 and state["tokens"] == 84 <= 100
    assert sum(o["generations"] == ["ok"] for o in outputs) == 2
    assert state["budget_exhausted"] == "budget: max_tokens=100 reached"
    assert (state["refused"], state["reserved_tokens"]) == (6, 0)


def test_spending_past_the_token_cap_marks_the_budget_exhausted_at_once(tmp_path):
    # a prompt can take more tokens than its length suggests: the cap is exceeded, and said
    llm = _llm(
        tmp_path,
        lambda r: httpx.Response(200, json=_completion(["ok"], tokens=(500, 20))),
        max_tokens=100,
    )
    assert _ask(llm)["generations"] == ["ok"]
    state = Ledger(tmp_path / "ledger.json", None, None).read()
    assert state["tokens"] == 520
    assert state["budget_exhausted"] == "budget: max_tokens=100 reached"


def test_a_cap_below_one_requests_worst_case_still_sends_the_first_request(tmp_path):
    """Reserving max_tokens x n up front refused every request of a small budget: the run sent
    nothing, ever. The first request goes out; its real cost is recorded against the cap."""
    sent = []

    def handler(request):
        sent.append(1)
        return httpx.Response(200, json=_completion(["ok"], tokens=(10, 20)))

    llm = _llm(tmp_path, handler, max_tokens=30)  # one request reserves 6 + 32 > 30
    assert _ask(llm)["generations"] == ["ok"]
    other = [{"role": "user", "content": "Noch eine Frage"}]
    second = asyncio.run(llm.agenerate(other, max_new_tokens=32, seed=1))
    state = Ledger(tmp_path / "ledger.json", None, None).read()
    assert len(sent) == 1 and second["generations"] != ["ok"]  # the budget is spent now
    assert state["tokens"] == 30 and state["refused"] == 1
    assert state["budget_exhausted"] == "budget: max_tokens=30 reached"


class _Tokens:
    """A tokenizer's and a model's surface as ``_local_generate_locked`` uses them."""

    eos_token_id = 2
    pad_token_id = 0

    def __init__(self, eos_ids, generated):
        import types

        self.generation_config = types.SimpleNamespace(eos_token_id=eos_ids)
        self.generated = generated

    def apply_chat_template(self, messages, **kw):
        import torch

        return {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3)}

    def generate(self, input_ids, attention_mask, **kw):
        import torch

        return torch.tensor([[*input_ids[0].tolist(), *g] for g in self.generated])

    def decode(self, tokens, skip_special_tokens):
        return " ".join(str(t) for t in tokens if t not in (0, 2, 9))


def test_a_local_teacher_stopping_on_any_eos_id_of_its_generation_config_finished(tmp_path):
    """Llama 3 / Qwen chat models end a turn on ``<|eot_id|>``, listed in the generation
    config but not the tokenizer's eos: such answers were all taken as cut off (dropped)."""
    llm = _llm(tmp_path, None, kind="transformers", constrain="off")
    fake = _Tokens([2, 9], generated=[[11, 12, 9, 0, 0], [13, 14, 15, 16, 17]])
    llm._local = (fake, fake)
    body = {"messages": MSGS, "n": 2, "max_tokens": 5, "temperature": 0.7, "top_p": 1.0}
    out = llm._local_generate(body)
    assert out["finish_reasons"] == ["stop", "length"]
    assert out["generations"] == ["11 12", "13 14 15 16 17"]
    assert out["output_tokens"] == 3 + 5  # up to the stop token; the padding after it is free


def test_a_local_teachers_cache_entries_are_per_dtype(tmp_path):
    """bfloat16 samples other answers than float32: the cached float32 answer is not reused."""
    calls = []

    def answer(dtype):
        def generate(body):
            calls.append(dtype)
            return {
                "generations": [f"Antwort in {dtype}."],
                "finish_reasons": ["stop"],
                "input_tokens": 3,
                "output_tokens": 4,
            }

        return generate

    for dtype in ("float32", "bfloat16", "float32"):
        llm = _llm(tmp_path, None, kind="transformers", constrain="off", dtype=dtype)
        llm._local_generate = answer(dtype)
        assert _ask(llm)["generations"] == [
            "Antwort in float32." if dtype == "float32" else "Antwort in bfloat16."
        ]
    assert calls == ["float32", "bfloat16"]  # the third ask was the first one's cache hit


def _keywords(schema) -> set[str]:
    """Every keyword used in ``schema``, at any depth (property names excluded)."""
    if isinstance(schema, list):
        return set().union(*(_keywords(v) for v in schema)) if schema else set()
    if not isinstance(schema, dict):
        return set()
    found = set(schema)
    for k, v in schema.items():
        subs = v.values() if k == "properties" and isinstance(v, dict) else [v]
        found |= set().union(*(_keywords(s) for s in subs)) if subs else set()
    return found


def test_strict_response_format_leaves_out_the_string_lengths_openai_refuses(tmp_path):
    """OpenAI's strict json_schema answers every request carrying minLength/maxLength with 400
    (it used to be sent, so no row survived, run after run); vLLM's own field keeps them."""
    from feinschliff.generate.templates import instructions_schema, ratings_schema

    for schema in (instructions_schema(3, 150), ratings_schema(2)):
        sent = _llm(tmp_path).request_body(MSGS, 1, 8, 0.7, 1.0, 3, {"json": schema})
        fmt = sent["response_format"]["json_schema"]
        assert fmt["strict"] is True
        assert not _keywords(fmt["schema"]) & {"minLength", "maxLength"}, fmt["schema"]
    items = instructions_schema(3, 150)
    strict = _llm(tmp_path).request_body(MSGS, 1, 8, 0.7, 1.0, 3, {"json": items})
    anfragen = strict["response_format"]["json_schema"]["schema"]["properties"]["anfragen"]
    assert (anfragen["minItems"], anfragen["maxItems"]) == (3, 3)  # allowed in strict mode
    assert items["properties"]["anfragen"]["items"]["maxLength"] == 150  # the caller's intact
    vllm = _llm(tmp_path, constrain="vllm").request_body(MSGS, 1, 8, 0.7, 1.0, 3, {"json": items})
    assert vllm["structured_outputs"]["json"]["properties"]["anfragen"]["items"]["maxLength"] == 150


def test_a_run_whose_every_request_is_refused_alike_fails_with_the_endpoints_error(
    tmp_path, monkeypatch
):
    """Every request refused with the same 400 is the request's shape, not a row: the run says
    so, quoting the endpoint, instead of "no rows survived".

    The real TeacherLLM records the refusals in its ledger against the MockTransport endpoint
    (a stand-in for the remote teacher API); the generation child process, which would talk to
    the endpoint from another process where a MockTransport cannot reach, is replaced by that
    ledger state, and the Distiset by an empty one. A real vLLM teacher cannot be made to refuse
    every request alike on demand; the real child against it, failing on a teacher outage:
    tests/integration/test_generate_vllm.py::test_teacher_outage_fails_clearly_and_the_rerun_repeats_no_completed_request
    (the all-alike refusal itself is checked only here)."""
    from feinschliff.generate import stage
    from feinschliff.generate.stage import GenerateError, run_generate

    body = "Invalid schema for response_format 'feinschliff': 'maxLength' is not permitted."
    llm = _llm(tmp_path, lambda r: httpx.Response(400, text=body))
    assert _ask(llm)["generations"] == [None]
    assert _ask(llm, temperature=0.1)["generations"] == [None]  # another request, same answer
    state = Ledger(tmp_path / "ledger.json", None, None).read()
    assert state["failed"] is None and state["rejected"] == state["requests"] == 2

    recipe = _recipe(tmp_path)
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(stage, "_run_child", lambda *a: state)
    monkeypatch.setattr(stage, "_load_leaves", lambda p: {"instructions_raw": []})
    with pytest.raises(GenerateError) as err:
        run_generate(recipe, tmp_path / "out")
    message = str(err.value)
    assert "every one of the 2 request(s)" in message and f"HTTP 400: {body}" in message

    # a different refusal among them: per-row problems (a prompt too long), dropped and counted
    def mixed(request):
        long = json.loads(request.content)["temperature"] > 0.5
        return httpx.Response(400, text="prompt too long" if long else body)

    llm = _llm(tmp_path, mixed)
    _ask(llm)
    _ask(llm, temperature=0.1)
    mixed_state = Ledger(tmp_path / "ledger.json", None, None).read()
    monkeypatch.setattr(stage, "_run_child", lambda *a: mixed_state)
    with pytest.raises(GenerateError, match="no rows survived"):
        run_generate(recipe, tmp_path / "out2")

    # some requests answered: the refused ones are rows, not the run
    answers = iter([httpx.Response(400, text=body), httpx.Response(200, json=_completion(["x"]))])
    llm = _llm(tmp_path, lambda r: next(answers))
    _ask(llm)
    _ask(llm, temperature=0.1)
    partial = Ledger(tmp_path / "ledger.json", None, None).read()
    assert partial["requests"] == 2 and partial["rejected"] == 1
    monkeypatch.setattr(stage, "_run_child", lambda *a: partial)
    with pytest.raises(GenerateError, match="no rows survived"):
        run_generate(recipe, tmp_path / "out3")


def _recipe(tmp_path: Path):
    """The demo recipe with a small `generate` section (seeds in ``tmp_path``)."""
    import yaml

    from feinschliff.recipe_loader import load_recipe

    root = Path(__file__).resolve().parents[2]
    data = yaml.safe_load((root / "recipes" / "demo-de.yaml").read_text())
    for src in data["feedback"]["sources"]:
        src["path"] = str((root / "recipes" / src["path"]).resolve())
    data["generate"] = {
        "seeds": {"topics": "themen.txt", "pii": "off"},
        "teacher": {"kind": "openai", "base_url": "http://t.invalid/v1", "model": "teacher"},
        "filters": {"decontaminate": False},
    }
    (tmp_path / "themen.txt").write_text("Tarifwechsel\n", encoding="utf-8")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return load_recipe(tmp_path / "recipe.yaml")


def test_an_endpoint_ignoring_n_is_named_in_the_error(tmp_path):
    """TGI's chat API ignores `n` and returns one choice; preference mode needs n of them."""
    llm = _llm(tmp_path, lambda r: httpx.Response(200, json=_completion(["nur eine"])))
    assert _ask(llm, n=2)["generations"] == [None, None]
    failed = Ledger(tmp_path / "ledger.json", None, None).read()["failed"]
    assert "1 choice(s) for n=2" in failed and "TGI" in failed and "vLLM or OpenAI" in failed


def test_an_entry_after_a_torn_line_starts_a_line_of_its_own(tmp_path):
    """A kill tore the last line: the next reply must not be glued onto the fragment (both
    would be lost, and a paid reply asked again)."""
    path = tmp_path / "requests.jsonl"
    RequestCache(path).put("k1", {"generations": ["a"]})
    with path.open("a") as f:
        f.write('{"key": "k2", "respo')
    RequestCache(path).put("k3", {"generations": ["c"]})
    reloaded = RequestCache(path)
    assert reloaded.get("k1") == {"generations": ["a"]}
    assert reloaded.get("k3") == {"generations": ["c"]}
    assert reloaded.get("k2") is None and len(reloaded) == 2


@pytest.mark.parametrize("status", [401, 400, 503])
def test_an_error_body_echoing_the_api_key_never_carries_it(tmp_path, monkeypatch, status):
    # endpoints and proxies echo the key they refused ("Incorrect API key provided: sk-..."); the
    # body went verbatim into the ledger's failure or first rejection, so into the run's error;
    # padded so that the key straddles the 300 characters of the body kept
    monkeypatch.setenv("TEACHER_KEY", "sk-secret-123")

    def handler(request):
        key = request.headers["authorization"].removeprefix("Bearer ")
        message = "Incorrect API key provided: "
        return httpx.Response(status, text="x" * (295 - len(message)) + message + key)

    llm = _llm(tmp_path, None, api_key_env="TEACHER_KEY", retries=0)
    transport = httpx.MockTransport(handler)
    original = httpx.AsyncClient
    monkeypatch.setattr(httpx, "AsyncClient", lambda **kw: original(transport=transport, **kw))
    _ask(llm)
    state = Ledger(tmp_path / "ledger.json", None, None).read()
    said = state["failed"] or state["first_rejection"]
    assert f"HTTP {status}" in said and "sk-" not in said


def test_a_rate_limit_is_retried_after_the_wait_it_asks_for(tmp_path, monkeypatch):
    # a 429 "Retry-After: 20" was retried after 1, 2, 4 s (backoff_s 1): a rate limit that
    # asked for 20 s failed the run as an outage
    from feinschliff.generate import teacher

    waits = []

    async def sleep(seconds):
        waits.append(seconds)

    monkeypatch.setattr(teacher.asyncio, "sleep", sleep)
    replies = iter(
        [
            httpx.Response(429, headers={"Retry-After": "20"}, text="slow down"),
            httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
            httpx.Response(200, json=_completion(["ok"])),
        ]
    )
    llm = _llm(tmp_path, lambda r: next(replies), retries=3)
    assert _ask(llm)["generations"] == ["ok"]
    assert waits[0] == 20.0 and waits[1] < 1.0  # an HTTP date is not read: the backoff
    assert teacher.retry_after("3600") == teacher.MAX_RETRY_AFTER_S
    assert teacher.retry_after("nan") == teacher.retry_after("-5") == 0.0
