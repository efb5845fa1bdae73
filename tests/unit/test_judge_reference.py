"""Reference answers reach the judge: a question with a ``reference`` is graded with
``single-math-v1`` and compared with ``pair-math-v1`` (``ref_answer_1 = reference[0]``), as in
FastChat's MT-Bench; a question without one keeps ``single-v1`` / ``pair-v2``."""

from __future__ import annotations

import asyncio
import json

import pytest

from feinschliff.evaluate import judge as J
from feinschliff.paths import project_root
from feinschliff.specs.evaluate import JudgeSpec

PROMPTS = J.load_prompts(project_root() / "evals" / "judge" / "prompts_de.jsonl")
SPEC = JudgeSpec(base_url="http://127.0.0.1:1/v1", model="m")
REF = "Die richtige Lösung ist 42, weil 6 mal 7 gleich 42 ist."
WITH_REF = {
    "question_id": "q-ref",
    "category": "math",
    "turns": ["Was ist 6*7?"],
    "reference": [REF],
}
NO_REF = {
    "question_id": "q-plain",
    "category": "writing",
    "turns": ["Ein Gedicht?"],
    "reference": [],
}


def _run(questions, monkeypatch, reply=None):
    """Judge ``questions`` with a fake client; returns the result and every (system, user).

    ``JudgeClient.complete`` is replaced because these tests check which prompts reach the judge
    and how chosen verdicts are combined: a real judge (a vLLM serving the demo model, which the
    unit suite runs without) cannot be made to return a given verdict on demand. The real client
    against a real vLLM judge runs in tests/integration/test_vllm_judge.py, its HTTP handling in
    tests/unit/test_judge_http.py; the reference answers in the prompts are checked only here.
    """
    seen: list[tuple[str, str, str | None]] = []

    async def fake_complete(self, system: str, user: str, regex: str | None) -> str:
        seen.append((system, user, regex))
        if reply is not None:
            return reply(system, user, regex)
        return "Bewertung: [[7]]" if regex == J.SINGLE_REGEX else "[[A]]"

    monkeypatch.setattr(J.JudgeClient, "complete", fake_complete)
    answers = {
        role: [f"{role}-antwort-{i}" for i in range(len(questions))]
        for role in ("base", "candidate")
    }
    result = asyncio.run(J._judge(SPEC, PROMPTS, questions, answers, "base"))
    return result, seen


def _expected(name: str, q: dict, **answers: str) -> tuple[str, str]:
    prompt = PROMPTS[name]
    fields = {"question": q["turns"][0], **answers}
    if q["reference"]:
        fields["ref_answer_1"] = q["reference"][0]
    return prompt["system_prompt"], prompt["prompt_template"].format(**fields)


def test_bundled_prompts_hold_the_math_variants():
    for name in ("single-math-v1", "pair-math-v1"):
        assert "{ref_answer_1}" in PROMPTS[name]["prompt_template"]
    assert PROMPTS["single-math-v1"]["output_format"] == PROMPTS["single-v1"]["output_format"]
    assert PROMPTS["pair-math-v1"]["output_format"] == PROMPTS["pair-v2"]["output_format"]


def test_question_with_reference_uses_the_math_prompts(monkeypatch):
    _, seen = _run([WITH_REF], monkeypatch)
    prompts = {(s, u) for s, u, _ in seen}
    assert len(seen) == 4  # base and candidate graded, the pair judged in both orders
    assert all(REF in u for _, u, _ in seen)
    expected = {
        _expected("single-math-v1", WITH_REF, answer="base-antwort-0"),
        _expected("single-math-v1", WITH_REF, answer="candidate-antwort-0"),
        _expected(
            "pair-math-v1", WITH_REF, answer_a="candidate-antwort-0", answer_b="base-antwort-0"
        ),
        _expected(
            "pair-math-v1", WITH_REF, answer_a="base-antwort-0", answer_b="candidate-antwort-0"
        ),
    }
    assert prompts == expected
    # the verdict formats are unchanged: grades ask for the rating, pairs for A/B/C
    singles = [r for _, u, r in seen if "Bewertung: [[5]]" in u]
    assert len(singles) == 2 and set(singles) == {J.SINGLE_REGEX}
    assert {r for _, u, r in seen if "Bewertung: [[5]]" not in u} == {J.PAIR_REGEX}


def test_question_without_reference_keeps_the_general_prompts(monkeypatch):
    _, seen = _run([NO_REF], monkeypatch)
    expected = {
        _expected("single-v1", NO_REF, answer="base-antwort-0"),
        _expected("single-v1", NO_REF, answer="candidate-antwort-0"),
        _expected("pair-v2", NO_REF, answer_a="candidate-antwort-0", answer_b="base-antwort-0"),
        _expected("pair-v2", NO_REF, answer_a="base-antwort-0", answer_b="candidate-antwort-0"),
    }
    assert {(s, u) for s, u, _ in seen} == expected
    assert not any("Referenzantwort" in s + u for s, u, _ in seen)


def test_math_verdicts_are_parsed_and_position_swapped(monkeypatch):
    """A judge that prefers the candidate in both orders under pair-math-v1: a consistent win;
    single-math grades parse like single-v1 grades."""

    def reply(system: str, user: str, regex: str | None) -> str:
        if regex == J.SINGLE_REGEX:
            return "Vergleich mit der Referenz ... Bewertung: [[8]]"
        a_is_candidate = user.index("candidate-antwort") < user.index("base-antwort")
        return "[[A]]" if a_is_candidate else "[[B]]"

    result, _ = _run([WITH_REF], monkeypatch, reply)
    assert result.scores == {"base": [8.0], "candidate": [8.0]}
    assert result.single_failures == {"base": 0, "candidate": 0}
    (pair,) = result.pairs
    assert (pair.first, pair.second, pair.outcome, pair.consistent) == ("A", "B", 1.0, True)


@pytest.mark.parametrize("reference", [[], [""], None])
def test_missing_or_empty_reference_means_no_reference(reference):
    q = {"question_id": "q", "turns": ["Frage"], "reference": reference}
    assert J.reference_answer(q) is None
    system, user = J.judge_prompt(PROMPTS, "single", q, answer="x")
    assert (system, user) == _expected("single-v1", {**q, "reference": []}, answer="x")


def test_every_bundled_reference_reaches_its_judge_prompts(monkeypatch):
    path = project_root() / "evals" / "judge" / "questions_de.jsonl"
    questions = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x]
    _, seen = _run(questions, monkeypatch)
    with_ref = [q for q in questions if q["reference"]]
    assert with_ref  # the bundled reasoning/math/coding questions
    for q in with_ref:
        # two grades and two pair verdicts per question carry its reference
        assert sum(q["reference"][0] in u for _, u, _ in seen) == 4, q["question_id"]
