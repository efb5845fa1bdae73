"""Recipe sections `evaluate` and `gate`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from feinschliff.specs.common import Strict

# --------------------------------------------------------------------------- evaluate


class EvaluateSpec(Strict):
    tasks: list[str] = Field(
        default_factory=lambda: ["de_wissen_mc"],
        min_length=1,
        description="lm-eval tasks: bundled ones from evals/lm_eval_tasks or upstream names.",
    )
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N items per task.")
    batch_size: int = Field(8, ge=1, description="Evaluation batch size.")
    num_fewshot: int = Field(0, ge=0, description="Few-shot examples per prompt.")


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
        description="Compare against the production adapter; falls back to the base model "
        "when nothing is in production yet.",
    )
    tolerance: float = Field(0.0, ge=0, description="Allowed drop (absolute).")
    higher_is_better: bool = Field(True, description="Direction of the metric.")


class MinSamplesRule(_Rule):
    rule: Literal["min_samples"] = Field(description="The metric must rest on enough samples.")
    threshold: int = Field(ge=1, description="Minimum number of evaluated samples.")


GateRule = Annotated[
    MinRule | MaxRule | NoRegressionRule | MinSamplesRule, Field(discriminator="rule")
]


class GateSpec(Strict):
    rules: list[GateRule] = Field(min_length=1, description="All rules must pass to promote.")
