"""Evaluation on the real demo model: lm-eval tasks, held-out feedback metrics, the judge path.

The judge endpoints here are small local HTTP servers standing in for a remote judge API (a
third-party service that cannot run here); they answer in fixed ways to exercise parsing, order
swap and failure handling. The judge against a real vLLM lives in test_vllm_judge.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feinschliff.evaluate import run_evaluate
from feinschliff.gate import decide_promotion
from feinschliff.recipe_loader import load_recipe
from tests.http_stub import StubHandler, base_url, serve

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo-de.yaml"

pytestmark = pytest.mark.integration


class _Judge(StubHandler):
    reply = "Bewertung: [[5]]"
    bodies: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.read_body())
        type(self).bodies.append(body)
        user = body["messages"][-1]["content"]
        text = self.reply if "Bewertung" not in self.reply or "Assistent A" not in user else "[[A]]"
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]})
        self.respond(200, payload.encode())


@pytest.fixture()
def judge_server():
    servers = []

    def start(reply: str) -> str:
        handler = type("J", (_Judge,), {"reply": reply, "bodies": []})
        srv = serve(handler)
        servers.append(srv)
        return base_url(srv) + "/v1", handler

    yield start
    for srv in servers:
        srv.shutdown()


def _recipe(url: str, *extra: str):
    return load_recipe(
        DEMO,
        [
            "evaluate.limit=6",
            "evaluate.heldout_max_new_tokens=12",
            f"evaluate.judge={{base_url: '{url}', model: judge, max_questions: 4, max_new_tokens: 12, "
            "bootstrap_iters: 200, retries: 0}",
            *extra,
        ],
    )


def test_report_has_heldout_metrics_and_position_biased_judge(
    demo_adapter, demo_ingest, judge_server, home, tmp_path
):
    url, handler = judge_server("Bewertung: [[5]]")  # grades 5, always prefers position A
    recipe = _recipe(url)
    ref = run_evaluate(recipe, demo_adapter, tmp_path / "eval", data=demo_ingest)
    report = json.loads((Path(ref.path) / "report.json").read_text())
    cand, base = report["metrics"]["candidate"], report["metrics"]["base"]
    acc = cand["heldout/preference_accuracy"]
    assert 0.0 <= acc["value"] <= 1.0 and acc["samples"] > 0
    assert "heldout/preference_accuracy" in base
    assert cand["judge/score"]["value"] == 5.0 and cand["judge/score"]["samples"] == 4
    win = cand["judge/win_rate"]
    # a judge that always says A is order-biased: every pair is inconsistent, i.e. a tie
    assert win["value"] == 0.5 and win["inconsistent"] == 4 and win["opponent"] == "base"
    pair_requests = [b for b in handler.bodies if "Assistent A" in b["messages"][-1]["content"]]
    assert len(pair_requests) == 8  # 4 questions x 2 orders
    assert "contamination/overlaps" in cand and cand["contamination/overlaps"]["value"] == 0
    md = (Path(ref.path) / "report.md").read_text()
    assert "judge/win_rate" in md and "order-inconsistent" in md
    assert (Path(ref.path) / "judge" / "pairs.jsonl").exists()


def test_unparseable_judge_is_counted_and_fails_the_gate(
    demo_adapter, demo_ingest, judge_server, home, tmp_path
):
    url, _ = judge_server("Die Antwort ist ganz ordentlich.")
    recipe = _recipe(
        url, "evaluate.heldout=false", "gate.rules=[{rule: win_rate, threshold: 0.0, min_valid: 2}]"
    )
    ref = run_evaluate(recipe, demo_adapter, tmp_path / "eval", data=demo_ingest)
    report = json.loads((Path(ref.path) / "report.json").read_text())
    win = report["metrics"]["candidate"]["judge/win_rate"]
    assert win["value"] is None and win["samples"] == 0 and win["parse_failures"] == 4
    assert report["metrics"]["candidate"]["judge/score"]["parse_failures"] == 4
    decision = decide_promotion(report, recipe.gate)
    assert not decision.promote
    assert "insufficient valid judgements" in decision.results[0].detail


def test_upstream_task_offline_fails_fast_naming_the_dataset(demo_adapter, home, tmp_path):
    from feinschliff.evaluate.harness import EvalError

    # de_wissen_mc too: the demo's contamination rule needs a task with local data to check
    tasks = "evaluate.tasks=[arc_de, de_wissen_mc]"
    recipe = load_recipe(DEMO, [tasks, "evaluate.heldout=false"])
    with pytest.raises(EvalError, match="alexandrainst/m_arc"):
        run_evaluate(recipe, demo_adapter, tmp_path / "eval")
