"""Recipe sections `evaluate` and `gate`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from feinschliff.specs.common import Strict

# --------------------------------------------------------------------------- evaluate

USECASE_TASK = "usecase_heldout"  # ingest's held-out preference pairs as an lm-eval task


class JudgeSpec(Strict):
    base_url: str = Field(
        pattern=r"^https?://",
        description="OpenAI-compatible base URL of the judge, e.g. http://127.0.0.1:8000/v1.",
    )
    model: str = Field(description="Model name the judge endpoint serves.")
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Z][A-Z0-9_]*$",
        description="Name of the environment variable holding the judge's API key "
        "(never the key itself; keys do not belong in recipes).",
    )
    questions: Literal["bundled", "heldout", "both"] = Field(
        "both",
        description="Bundled German MT-Bench-style questions (evals/judge), the recipe's "
        "held-out feedback prompts, or both.",
    )
    max_questions: int | None = Field(
        None, ge=1, description="Judge at most this many questions (first N, bundled first)."
    )

    @property
    def asks_bundled(self) -> bool:
        """Whether the bundled questions are asked (their text is eval data to keep out of
        training)."""
        return self.questions != "heldout"

    max_new_tokens: int = Field(256, ge=1, description="Answer length for our own inference.")
    judge_max_tokens: int = Field(512, ge=8, description="Token limit for the judge's verdict.")
    concurrency: int = Field(4, ge=1, description="Judge requests in flight at once.")
    retries: int = Field(3, ge=0, description="Retries per judge request (backoff 1, 2, 4 s).")
    timeout_s: float = Field(120.0, gt=0, description="Timeout of one judge request.")
    constrain_output: bool = Field(
        False,
        description="Ask a vLLM judge for structured output (regex) so weak judges answer "
        "in the verdict format. Only for vLLM endpoints.",
    )
    bootstrap_iters: int = Field(
        2000, ge=100, description="Bootstrap resamples for the win-rate CI."
    )
    seed: int = Field(0, description="Seed for the bootstrap.")


class EvaluateSpec(Strict):
    tasks: list[str] = Field(
        default_factory=lambda: ["de_wissen_mc"],
        min_length=1,
        description="lm-eval tasks: bundled ones from evals/lm_eval_tasks, upstream names, or "
        "usecase_heldout (ingest's held-out preference pairs as two-way multiple choice).",
    )
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N items per task.")
    batch_size: int = Field(
        8,
        ge=1,
        description="Batch size of lm-eval and of our own generation (held-out corrections, "
        "judge answers).",
    )
    num_fewshot: int = Field(0, ge=0, description="Few-shot examples per prompt.")
    heldout: bool = Field(
        True,
        description="Score held-out feedback: preference accuracy (log-prob of chosen > "
        "rejected) and chrF against human corrections.",
    )
    heldout_max_new_tokens: int = Field(
        96, ge=1, description="Answer length when comparing against held-out corrections."
    )
    judge: JudgeSpec | None = Field(None, description="Optional LLM-as-judge (MT-Bench-DE style).")
    reuse_baselines: bool = Field(
        True,
        description="Reuse the base model's and the production adapter's lm-eval results "
        "(numbers and samples) from an earlier run (cache/evaluate/ under FEINSCHLIFF_HOME) when "
        "nothing that can change them changed: model and adapter files (a hub model: its commit "
        "in the local HF cache), dtype, tasks and their files and data, limit, num_fewshot, "
        "batch_size, library versions, the evaluation code, device. usecase_heldout has an entry "
        "of its own, keyed with the held-out rows: new feedback recomputes only it. The "
        "candidate's lm-eval, judge and held-out metrics are always computed. false: compute "
        "everything.",
    )


# --------------------------------------------------------------------------- gate

ModelRole = Literal["candidate", "base", "production"]


class _Rule(Strict):
    metric: str = Field(description="Metric name as in report.json, e.g. de_wissen_mc/acc.")


class MinRule(_Rule):
    rule: Literal["min"] = Field(description="Candidate's metric must be >= threshold.")
    threshold: float = Field(description="Lowest acceptable value.")


class MaxRule(_Rule):
    rule: Literal["max"] = Field(description="Candidate's metric must be <= threshold.")
    threshold: float = Field(description="Highest acceptable value.")


class NoRegressionRule(_Rule):
    rule: Literal["no_regression"] = Field(
        description="Candidate may be worse than the baseline by at most `tolerance`."
    )
    baseline: Literal["base", "production"] = Field(
        "production",
        description="Compare against the production adapter, and also against the base model "
        "(when the report has its value), so that repeated promotions cannot drift more than "
        "`tolerance` below the base model; falls back to the base model alone when nothing is "
        "in production yet (when production was evaluated but lacks the metric's value, the "
        "rule fails).",
    )
    tolerance: float = Field(
        0.0, ge=0, description="Allowed drop (absolute; a drop of exactly `tolerance` passes)."
    )
    higher_is_better: bool = Field(
        True,
        description="Direction of the metric; the rule fails when the report's metric entry "
        "(from lm-eval) states the opposite direction.",
    )


class MinSamplesRule(_Rule):
    rule: Literal["min_samples"] = Field(description="The metric must rest on enough samples.")
    threshold: int = Field(ge=1, description="Minimum number of evaluated samples.")


class WinRateRule(Strict):
    rule: Literal["win_rate"] = Field(
        description="Judge win rate of the candidate vs production (or base): the lower bound "
        "of its bootstrap 95 % CI must reach `threshold` (a CI that is a single point at "
        "exactly `threshold`, e.g. [0.5, 0.5] from a judge that only says tie, does not pass)."
    )
    metric: str = Field("judge/win_rate", description="Win-rate metric in report.json.")
    threshold: float = Field(0.5, ge=0, le=1, description="Minimum lower CI bound.")
    min_valid: int = Field(
        10,
        ge=1,
        description="Minimum valid judgements: decisive (a win or a loss, not a tie) and "
        "order-consistent (the same verdict with the answers swapped); fewer fails the rule.",
    )


class ContaminationRule(Strict):
    rule: Literal["contamination"] = Field(
        description=(
            "Training data must hold no eval text: no n-gram of an eval text (n = "
            "feedback.decontamination.ngram, default 13), no whole eval text of 8 to n-1 words "
            "(value must be 0)."
        )
    )
    metric: str = Field("contamination/overlaps", description="Overlap count in report.json.")


class PoisoningRule(Strict):
    rule: Literal["poisoning"] = Field(
        description="Trigger-phrase scan of the training data: no row may hold an n-gram that "
        "only one contributor (annotator, end user) put into the data, more often than chance "
        "allows (value must be 0; see feinschliff.poisoning)."
    )
    metric: str = Field(
        "poisoning/suspicious_rows", description="Suspicious-row count in report.json."
    )


class RequireApprovalRule(Strict):
    rule: Literal["require_approval"] = Field(
        description="A human approves or rejects in the Prefect UI; a timeout rejects."
    )
    timeout_s: int = Field(3600, ge=1, description="Seconds to wait for the decision.")


GateRule = Annotated[
    MinRule
    | MaxRule
    | NoRegressionRule
    | MinSamplesRule
    | WinRateRule
    | ContaminationRule
    | PoisoningRule
    | RequireApprovalRule,
    Field(discriminator="rule"),
]


class GateSpec(Strict):
    rules: list[GateRule] = Field(min_length=1, description="All rules must pass to promote.")
