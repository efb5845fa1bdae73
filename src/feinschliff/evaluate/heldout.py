"""Held-out feedback metrics: does the adapter agree with what users preferred and corrected?

- preference accuracy: share of held-out pairs where the model gives the chosen answer a higher
  log-probability than the rejected one (mean per answer token, so length does not decide);
- correction similarity: chrF (sacrebleu, 0-100 scaled to 0-1) of the model's greedy answer against
  the human correction, over held-out SFT rows that came from corrections.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from feinschliff.artifacts import jsonl_lines
from feinschliff.evaluate.inference import answer_logprob, generate_answers


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in jsonl_lines(path.read_text(encoding="utf-8"))]


def preference_accuracy(model: Any, tok: Any, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not rows:
        return None
    wins = 0
    for row in rows:
        chosen = answer_logprob(model, tok, row["prompt"], row["chosen"][-1]["content"])
        rejected = answer_logprob(model, tok, row["prompt"], row["rejected"][-1]["content"])
        wins += chosen > rejected
    return {
        "value": wins / len(rows),
        "stderr": _binomial_se(wins, len(rows)),
        "samples": len(rows),
    }


def correction_chrf(
    model: Any, tok: Any, rows: list[dict[str, Any]], *, max_new_tokens: int, batch_size: int
) -> dict[str, Any] | None:
    rows = [r for r in rows if r.get("provenance", {}).get("rule") == "correction"]
    if not rows:
        return None
    from sacrebleu.metrics import CHRF

    prompts = [r["messages"][:-1] for r in rows]
    refs = [r["messages"][-1]["content"] for r in rows]
    hyps = generate_answers(
        model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    score = CHRF().corpus_score(hyps, [refs]).score / 100.0
    return {"value": score, "stderr": None, "samples": len(rows)}


def _binomial_se(k: int, n: int) -> float:
    p = k / n
    return (p * (1 - p) / n) ** 0.5
