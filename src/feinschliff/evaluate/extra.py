"""Evaluation beyond lm-eval: held-out feedback metrics and the LLM judge, per model role.

Loads each role's model once, computes held-out preference accuracy and correction chrF,
generates answers to the judge questions, then lets the judge grade all roles and compare the
candidate with production (or base). Judge answers and verdicts are kept in ``judge/``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from feinschliff.artifacts import jsonl_lines
from feinschliff.evaluate.heldout import correction_chrf, preference_accuracy, read_jsonl
from feinschliff.evaluate.inference import generate_answers, load_model
from feinschliff.paths import judge_questions_file, project_root
from feinschliff.recipe import Recipe

log = logging.getLogger(__name__)


def judge_questions(recipe: Recipe, data_dir: Path) -> list[dict[str, Any]]:
    spec = recipe.evaluate.judge
    assert spec is not None
    questions: list[dict[str, Any]] = []
    if spec.asks_bundled:
        path = judge_questions_file()
        questions += [json.loads(x) for x in jsonl_lines(path.read_text(encoding="utf-8"))]
    if spec.questions in ("heldout", "both"):
        for i, row in enumerate(read_jsonl(data_dir / "heldout" / "sft.jsonl")):
            user = [m["content"] for m in row["messages"] if m["role"] == "user"]
            if user:
                questions.append(
                    {
                        "question_id": f"heldout-{i}",
                        "category": "heldout",
                        "turns": [user[-1]],
                        "reference": [],
                    }
                )
    return questions[: spec.max_questions] if spec.max_questions else questions


def judge_and_heldout(
    recipe: Recipe, model_path: str, roles: dict[str, str | None], data_dir: Path, out: Path
) -> dict[str, dict[str, Any]]:
    spec = recipe.evaluate
    pref_rows = read_jsonl(data_dir / "heldout" / "preference.jsonl")
    sft_rows = read_jsonl(data_dir / "heldout" / "sft.jsonl")
    questions = judge_questions(recipe, data_dir) if spec.judge else []
    metrics: dict[str, dict[str, Any]] = {}
    answers: dict[str, list[str]] = {}
    for role, adapter in roles.items():
        model, tok = load_model(
            model_path, recipe.base_model.dtype, adapter, recipe.base_model.revision
        )
        entries: dict[str, Any] = {}
        if spec.heldout:
            if (acc := preference_accuracy(model, tok, pref_rows)) is not None:
                entries["heldout/preference_accuracy"] = acc
            chrf = correction_chrf(
                model,
                tok,
                sft_rows,
                max_new_tokens=spec.heldout_max_new_tokens,
                batch_size=spec.batch_size,
            )
            if chrf is not None:
                entries["heldout/correction_chrf"] = chrf
        if questions:
            log.info("evaluate: %s answers %d judge questions", role, len(questions))
            prompts = [[{"role": "user", "content": q["turns"][0]}] for q in questions]
            answers[role] = generate_answers(
                model,
                tok,
                prompts,
                max_new_tokens=spec.judge.max_new_tokens,
                batch_size=spec.batch_size,
            )
        metrics[role] = entries
        del model
    if questions and spec.judge:
        from feinschliff.evaluate.judge import judge_metrics, run_judge

        opponent = "production" if "production" in roles else "base"
        result = run_judge(
            spec.judge,
            project_root() / "evals" / "judge" / "prompts_de.jsonl",
            questions,
            answers,
            opponent,
        )
        (out / "judge").mkdir(parents=True, exist_ok=True)
        (out / "judge" / "answers.json").write_text(
            json.dumps({"questions": questions, "answers": answers}, ensure_ascii=False, indent=1)
        )
        (out / "judge" / "pairs.jsonl").write_text(
            "".join(json.dumps(p.__dict__) + "\n" for p in result.pairs)
        )
        for role, entries in judge_metrics(result, spec.judge, opponent).items():
            metrics.setdefault(role, {}).update(entries)
    return metrics
