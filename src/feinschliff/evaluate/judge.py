"""LLM-as-judge, MT-Bench-DE style: single grading (1-10) and pairwise with position swap.

The judge is any OpenAI-compatible ``/chat/completions`` endpoint. Verdicts are parsed, never
guessed: a reply without ``Bewertung: [[n]]`` (single) or ``[[A]]``/``[[B]]``/``[[C]]``
(pairwise) counts as a parse failure and is left out of every score. Each pair is judged twice
with the answers swapped; the candidate wins a question only if both orders agree, a
disagreement counts as a tie (order bias cancels out). The win rate (win 1, tie 0.5, loss 0)
comes with a bootstrap 95 % confidence interval over questions, and with the number of
decisive order-consistent verdicts (wins and losses), which the gate's ``min_valid`` counts.

As in FastChat's MT-Bench, a question with a reference answer (the bundled ``reasoning``,
``math`` and ``coding`` questions) is graded with ``single-math-v1`` and compared with
``pair-math-v1``, both filled with ``ref_answer_1 = reference[0]``; every other question uses
``single-v1`` / ``pair-v2``. The math variants ask for the same verdict formats.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from feinschliff.artifacts import jsonl_lines
from feinschliff.specs.evaluate import JudgeSpec

log = logging.getLogger(__name__)

RATING_RE = re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]")
RATING_FALLBACK_RE = re.compile(r"Bewertung:\s*\[(\d+(?:\.\d+)?)\]")
VERDICT_RE = re.compile(r"\[\[([ABC])\]\]")
# Structured-output patterns for weak judges served by vLLM (FACTS: a 135M judge is 0 % parseable).
SINGLE_REGEX = r"Bewertung: \[\[([1-9]|10)\]\]"
PAIR_REGEX = r"\[\[(A|B|C)\]\]"
# Judge prompt names in evals/judge/prompts_de.jsonl, indexed by "has a reference answer".
SINGLE_PROMPTS = ("single-v1", "single-math-v1")
PAIR_PROMPTS = ("pair-v2", "pair-math-v1")


class JudgeError(RuntimeError):
    """The judge endpoint failed after all retries."""


@dataclass
class PairOutcome:
    question_id: str
    first: str | None  # verdict with the candidate as A
    second: str | None  # verdict with the candidate as B
    outcome: float | None = None  # 1 win, 0.5 tie, 0 loss, None unparseable
    consistent: bool = False


@dataclass
class JudgeResult:
    scores: dict[str, list[float]] = field(default_factory=dict)  # role -> valid single grades
    single_failures: dict[str, int] = field(default_factory=dict)
    pairs: list[PairOutcome] = field(default_factory=list)


def parse_rating(text: str) -> float | None:
    """The judge's grade, or None. Two different grades in one reply (the prompt's example
    "Bewertung: [[5]]" repeated before the real grade, a revised grade) are unparseable, as two
    different pairwise verdicts are: taking the first silently scored the example."""
    found = {float(g) for g in RATING_RE.findall(text)} or {
        float(g) for g in RATING_FALLBACK_RE.findall(text)
    }
    if len(found) != 1:
        return None
    value = found.pop()
    return value if 1 <= value <= 10 else None


def parse_verdict(text: str) -> str | None:
    found = set(VERDICT_RE.findall(text))
    return found.pop() if len(found) == 1 else None  # two different verdicts: unparseable


def load_prompts(path: Path) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in map(json.loads, jsonl_lines(path.read_text(encoding="utf-8")))}


def reference_answer(question: dict[str, Any]) -> str | None:
    """The reference answer to the question's first turn (FastChat's ``ref_answer_1``), or
    ``None`` when the question has none."""
    reference = question.get("reference") or []
    return reference[0] if reference and reference[0] else None


def judge_prompt(
    prompts: dict[str, dict[str, Any]], kind: str, question: dict[str, Any], **answers: str
) -> tuple[str, str]:
    """(system, user) for a ``single`` grade or a ``pair`` comparison of ``question``: with a
    reference answer ``single-math-v1`` / ``pair-math-v1`` and ``ref_answer_1 = reference[0]``
    (FastChat's reference-based judges), without one ``single-v1`` / ``pair-v2``."""
    ref = reference_answer(question)
    name = {"single": SINGLE_PROMPTS, "pair": PAIR_PROMPTS}[kind][ref is not None]
    prompt = prompts[name]
    fields = {"question": question["turns"][0], **answers}
    if ref is not None:
        fields["ref_answer_1"] = ref
    return prompt["system_prompt"], prompt["prompt_template"].format(**fields)


def combine(first: str | None, second: str | None) -> tuple[float | None, bool]:
    """Candidate outcome from (cand as A) and (cand as B) verdicts."""
    if first is None or second is None:
        return None, False
    a = {"A": 1.0, "B": 0.0, "C": 0.5}[first]
    b = {"A": 0.0, "B": 1.0, "C": 0.5}[second]
    return (a, True) if a == b else (0.5, False)


def bootstrap_ci(values: list[float], iters: int, seed: int) -> tuple[float, float]:
    if not values:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(iters))
    return means[int(0.025 * (iters - 1))], means[int(0.975 * (iters - 1))]


class JudgeClient:
    """Judge requests, retried like the teacher's (``feinschliff.generate.teacher``):
    connection errors, timeouts, 408/409/425/429 and 5xx with exponential backoff
    (``backoff_s`` * 1, 2, 4 ... plus up to 25 % jitter); any other status fails at once.
    Every failure is a ``JudgeError`` naming status, endpoint and a short excerpt of the reply.
    """

    RETRYABLE = frozenset({408, 409, 425, 429})  # plus every 5xx: transient

    def __init__(self, spec: JudgeSpec, *, backoff_s: float = 1.0):
        self.spec = spec
        self.backoff_s = backoff_s
        key = SecretStr(os.environ.get(spec.api_key_env, "") if spec.api_key_env else "")
        self._key = key
        headers = {"Authorization": f"Bearer {key.get_secret_value() or 'EMPTY'}"}
        self._client = httpx.AsyncClient(
            base_url=spec.base_url.rstrip("/"), headers=headers, timeout=spec.timeout_s
        )
        self._sem = asyncio.Semaphore(spec.concurrency)

    async def close(self) -> None:
        await self._client.aclose()

    async def complete(self, system: str, user: str, regex: str | None) -> str:
        body: dict[str, Any] = {
            "model": self.spec.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": 0.0,
            "max_tokens": self.spec.judge_max_tokens,
        }
        if regex and self.spec.constrain_output:
            body["structured_outputs"] = {"regex": regex}
        url = f"{self.spec.base_url.rstrip('/')}/chat/completions"
        error = ""
        async with self._sem:
            for attempt in range(self.spec.retries + 1):
                if attempt:
                    delay = self.backoff_s * 2 ** (attempt - 1)
                    await asyncio.sleep(delay * random.uniform(1.0, 1.25))
                try:
                    resp = await self._client.post("/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    error = self._redact(f"{type(exc).__name__}: {exc}".rstrip(": "))
                    continue
                if resp.status_code == 200:
                    try:
                        return resp.json()["choices"][0]["message"]["content"] or ""
                    except (ValueError, LookupError, TypeError) as exc:
                        raise JudgeError(
                            f"judge {url} sent an unreadable reply ({type(exc).__name__}): "
                            f"{self._excerpt(resp)}"
                        ) from None
                error = f"HTTP {resp.status_code}: {self._excerpt(resp)}"
                if resp.status_code not in self.RETRYABLE and resp.status_code < 500:
                    raise JudgeError(f"judge {url} refused the request: {error}")
            raise JudgeError(
                f"judge {url} unavailable after {self.spec.retries + 1} attempt(s): {error}"
            )

    def _excerpt(self, resp: httpx.Response) -> str:
        return " ".join(self._redact(resp.text).split())[:300]  # redact, then cut: no key half

    def _redact(self, text: str) -> str:
        """``text`` without the API key (an endpoint may echo the request's headers)."""
        key = self._key.get_secret_value()
        return text.replace(key, "***") if key else text


async def _judge(
    spec: JudgeSpec,
    prompts: dict[str, dict[str, Any]],
    questions: list[dict[str, Any]],
    answers: dict[str, list[str]],
    opponent: str,
) -> JudgeResult:
    client = JudgeClient(spec)
    result = JudgeResult()
    try:

        async def grade(role: str, q: dict[str, Any], answer: str) -> tuple[str, float | None]:
            system, user = judge_prompt(prompts, "single", q, answer=answer)
            return role, parse_rating(await client.complete(system, user, SINGLE_REGEX))

        async def compare(q: dict[str, Any], a: str, b: str) -> str | None:
            system, user = judge_prompt(prompts, "pair", q, answer_a=a, answer_b=b)
            return parse_verdict(await client.complete(system, user, PAIR_REGEX))

        graded = await asyncio.gather(
            *(grade(role, q, answers[role][i]) for role in answers for i, q in enumerate(questions))
        )
        for role, score in graded:
            result.scores.setdefault(role, [])
            result.single_failures.setdefault(role, 0)
            if score is None:
                result.single_failures[role] += 1
            else:
                result.scores[role].append(score)
        cand, opp = answers["candidate"], answers[opponent]
        firsts = await asyncio.gather(
            *(compare(q, cand[i], opp[i]) for i, q in enumerate(questions))
        )
        seconds = await asyncio.gather(
            *(compare(q, opp[i], cand[i]) for i, q in enumerate(questions))
        )
        for q, v1, v2 in zip(questions, firsts, seconds, strict=True):
            outcome, consistent = combine(v1, v2)
            result.pairs.append(PairOutcome(q["question_id"], v1, v2, outcome, consistent))
    finally:
        await client.close()
    return result


def check_judge(spec: JudgeSpec, *, backoff_s: float = 1.0) -> None:
    """One small request to the judge before any model is loaded: a wrong URL, key or model
    name fails in seconds (``JudgeError``), not after hours of lm-eval and answer generation.
    Retried like every judge request."""

    async def probe() -> None:
        client = JudgeClient(spec, backoff_s=backoff_s)
        try:
            await client.complete("Antworte nur mit: OK", "OK?", None)
        finally:
            await client.close()

    asyncio.run(probe())


def run_judge(
    spec: JudgeSpec,
    prompts_path: Path,
    questions: list[dict[str, Any]],
    answers: dict[str, list[str]],
    opponent: str,
) -> JudgeResult:
    """Grade every role's answers and compare candidate against ``opponent`` (both orders)."""
    return asyncio.run(_judge(spec, load_prompts(prompts_path), questions, answers, opponent))


def judge_metrics(result: JudgeResult, spec: JudgeSpec, opponent: str) -> dict[str, dict[str, Any]]:
    """Flatten into report.json entries per role: judge/score and, for the candidate, judge/win_rate."""
    out: dict[str, dict[str, Any]] = {}
    for role, scores in result.scores.items():
        n = len(scores)
        out.setdefault(role, {})["judge/score"] = {
            "value": sum(scores) / n if n else None,
            "stderr": None,
            "samples": n,
            "parse_failures": result.single_failures.get(role, 0),
        }
    valid = [p.outcome for p in result.pairs if p.outcome is not None]
    low, high = bootstrap_ci(valid, spec.bootstrap_iters, spec.seed)
    out.setdefault("candidate", {})["judge/win_rate"] = {
        "value": sum(valid) / len(valid) if valid else None,
        "stderr": None,
        "ci_low": None if not valid else low,
        "ci_high": None if not valid else high,
        "samples": len(valid),
        "parse_failures": sum(1 for p in result.pairs if p.outcome is None),
        # verdicts that agree in both orders: the only ones that carry information (a judge
        # that always names one position yields only inconsistent ties, scored 0.5)
        "consistent": sum(1 for p in result.pairs if p.outcome is not None and p.consistent),
        "inconsistent": sum(1 for p in result.pairs if p.outcome is not None and not p.consistent),
        # of the consistent ones, only wins and losses are decisive: a judge that always says
        # [[C]] agrees with itself but tells nothing (the gate's min_valid counts wins + losses)
        "wins": sum(1 for p in result.pairs if p.consistent and p.outcome == 1.0),
        "losses": sum(1 for p in result.pairs if p.consistent and p.outcome == 0.0),
        "ties": sum(1 for p in result.pairs if p.consistent and p.outcome == 0.5),
        "opponent": opponent,
    }
    return out
