"""The recipe: one YAML file per use case, validated into typed pydantic models.

Every default lives in the section models (``feinschliff.specs.*``) and nowhere else; every field
carries its documentation in ``Field(description=...)``, from which the editor JSON Schema
(``recipes/recipe.schema.json``) is generated. Runtime code receives these objects, never dicts.
Loading, ``--set`` overrides and error formatting live in ``recipe_loader``.
"""

from __future__ import annotations

import warnings
from typing import Literal

from pydantic import Field, model_validator

from feinschliff.paths import bundled_task_names
from feinschliff.specs.base_model import BaseModelSpec
from feinschliff.specs.common import VLLM_LORA_RANKS, RecipePath, Strict
from feinschliff.specs.evaluate import (
    USECASE_TASK,
    EvaluateSpec,
    GateRule,
    GateSpec,
    MaxRule,
    MinRule,
    MinSamplesRule,
    NoRegressionRule,
)
from feinschliff.specs.feedback import DerivationRules, FeedbackSource, FeedbackSpec
from feinschliff.specs.generate import GenerateSpec
from feinschliff.specs.register import RegisterSpec, ScheduleSpec
from feinschliff.specs.train import (
    DPOTrain,
    Hyperparameters,
    KTOTrain,
    LoraSpec,
    ORPOTrain,
    SFTTrain,
    TrainSpec,
)

__all__ = [
    "VLLM_LORA_RANKS",
    "BaseModelSpec",
    "DPOTrain",
    "DerivationRules",
    "EvaluateSpec",
    "FeedbackSource",
    "FeedbackSpec",
    "GateRule",
    "GateSpec",
    "GenerateSpec",
    "Hyperparameters",
    "KTOTrain",
    "LoraSpec",
    "MaxRule",
    "MinRule",
    "MinSamplesRule",
    "NoRegressionRule",
    "ORPOTrain",
    "Recipe",
    "RecipePath",
    "RegisterSpec",
    "SFTTrain",
    "ScheduleSpec",
    "Strict",
    "TrainSpec",
]

# --------------------------------------------------------------------------- recipe


# BaseModel inherits ABCMeta.register; a recipe section called `register` is what users expect.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class Recipe(Strict):
    schema_version: Literal[1] = Field(description="Recipe format version.")
    use_case: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
        description="Use-case name: registry folder and adapter name (lowercase, digits, dashes).",
    )
    description: str = Field("", description="What this recipe is for, who owns it.")
    base_model: BaseModelSpec = Field(description="The model the adapter is trained on.")
    feedback: FeedbackSpec = Field(description="Production feedback exports to learn from.")
    generate: GenerateSpec | None = Field(None, description="Optional synthetic data generation.")
    train: TrainSpec = Field(description="Training method, backend, LoRA and hyperparameters.")
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec, description="Evaluation suite.")
    gate: GateSpec = Field(description="Promotion rules over the evaluation report.")
    register: RegisterSpec = Field(default_factory=RegisterSpec, description="Adapter registry.")
    schedule: ScheduleSpec | None = Field(None, description="Optional retraining schedule.")

    # Cross-field rules. A message starts with the YAML path it is about (the loader reports
    # it there); each one is a mistake that would otherwise pass `validate` and fail only after
    # training, or never (a gate rule on a metric nobody computes rejects every run).
    @model_validator(mode="after")
    def _adapter_fits_server(self) -> Recipe:
        if self.train.lora.r > self.register.max_lora_rank:
            raise ValueError(
                f"train.lora.r: {self.train.lora.r} exceeds register.max_lora_rank="
                f"{self.register.max_lora_rank}: the serving vLLM would refuse the adapter"
            )
        return self

    @model_validator(mode="after")
    def _gate_metrics_are_computed(self) -> Recipe:
        evaluate, tasks = self.evaluate, set(self.evaluate.tasks)
        producers = {"contamination", "poisoning", *tasks}
        producers |= {"heldout"} if evaluate.heldout else set()
        producers |= {"judge"} if evaluate.judge else set()
        # an upstream lm-eval group reports its subtasks under their own names: unknowable here
        upstream = tasks - set(bundled_task_names()) - {USECASE_TASK}
        for i, rule in enumerate(self.gate.rules):
            metric = getattr(rule, "metric", None)
            if metric is None:
                continue
            where = f"gate.rules.{i}.metric: {metric!r}"
            prefix = metric.split("/", 1)[0]
            if prefix == "judge" and evaluate.judge is None:
                raise ValueError(f"{where} needs evaluate.judge (no judge is configured)")
            if prefix == "heldout" and not evaluate.heldout:
                raise ValueError(f"{where} needs evaluate.heldout: true")
            if prefix not in producers and not upstream:
                known = ", ".join(sorted(producers))
                raise ValueError(
                    f"{where} is not computed: its task must be in evaluate.tasks "
                    f"(metrics come from: {known})"
                )
        return self

    @model_validator(mode="after")
    def _usecase_task_has_data(self) -> Recipe:
        if USECASE_TASK in self.evaluate.tasks and self.feedback.heldout_fraction == 0:
            raise ValueError(
                f"evaluate.tasks: {USECASE_TASK} scores held-out feedback pairs, but "
                "feedback.heldout_fraction is 0 (nothing is held out)"
            )
        return self
