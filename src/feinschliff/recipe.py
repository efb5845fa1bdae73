"""The recipe: one YAML file per use case, validated into typed pydantic models.

Every default lives here and nowhere else; every field carries its documentation in
``Field(description=...)``, from which the editor JSON Schema (``recipes/recipe.schema.json``)
is generated. Runtime code receives these objects, never dicts. Loading, ``--set`` overrides
and error formatting live in ``recipe_loader``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

# vLLM's --max-lora-rank accepts only these values (FACTS 10.3.1); an adapter rank must fit one.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _resolve_path(value: str, info: ValidationInfo) -> str:
    """Relative paths in a recipe are relative to the recipe file, like docker-compose."""
    base = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return str(path.resolve()) if base is not None else str(path)


RecipePath = Annotated[str, AfterValidator(_resolve_path)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- base model


class BaseModelSpec(Strict):
    name: str = Field(
        description="Model to fine-tune: a feinschliff alias (e.g. smollm2-135m-instruct, see "
        "`feinschliff models list`), a Hugging Face id, or a local HF folder (relative to the recipe).",
        min_length=1,
    )
    revision: str | None = Field(
        None, description="Git revision of a Hugging Face model (branch, tag or commit)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "bfloat16",
        description="Weight dtype for training and evaluation. Use float32 on CPU.",
    )


# --------------------------------------------------------------------------- feedback


class FeedbackSource(Strict):
    kind: Literal["argilla", "langfuse"] = Field(description="Which tool produced the export.")
    path: RecipePath = Field(
        description="Export file or directory (relative to the recipe): an Argilla `to_disk` "
        "folder, or a folder of Langfuse v2-observation and v3-score pages."
    )


class DerivationRules(Strict):
    min_rating: int = Field(
        4,
        ge=1,
        le=10,
        description="An answer rated at least this (Argilla rating) counts as accepted SFT data.",
    )
    corrections_as_sft: bool = Field(
        True,
        description="Use human corrections (Argilla text answer, Langfuse CORRECTION) as SFT targets.",
    )
    corrections_as_preference: bool = Field(
        True, description="Pair a correction (chosen) with the original answer (rejected)."
    )


class FeedbackSpec(Strict):
    sources: list[FeedbackSource] = Field(min_length=1, description="Feedback exports to ingest.")
    rules: DerivationRules = Field(
        default_factory=DerivationRules, description="How feedback turns into training rows."
    )
    heldout_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of prompts kept out of training for evaluation."
    )
    max_quarantine_fraction: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Fail ingest when more than this share of records is malformed and quarantined.",
    )
    seed: int = Field(0, description="Seed for the held-out split.")


# --------------------------------------------------------------------------- generate


class GenerateSpec(Strict):
    seeds: RecipePath = Field(description="Topics file (one topic per line) or documents folder.")
    num_instructions: int = Field(50, ge=1, description="Instructions to generate.")
    teacher_model: str = Field(description="Model name served by the teacher endpoint.")
    teacher_base_url: str = Field(description="OpenAI-compatible base URL of the teacher.")


# --------------------------------------------------------------------------- train


class LoraSpec(Strict):
    r: int = Field(16, gt=0, description="LoRA rank. vLLM serves ranks 1, 8, 16, 32, 64, ... only.")
    alpha: int = Field(32, gt=0, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear",
        description="Modules to adapt: 'all-linear' or a list such as [q_proj, v_proj].",
    )

    @field_validator("r")
    @classmethod
    def _rank_is_servable(cls, r: int) -> int:
        if r not in VLLM_LORA_RANKS:
            raise ValueError(
                f"rank {r} cannot be served: vLLM accepts ranks {list(VLLM_LORA_RANKS)}"
            )
        return r


class Hyperparameters(Strict):
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    max_steps: int = Field(
        -1, description="Stop after this many optimizer steps; -1 trains `epochs` epochs."
    )
    epochs: float = Field(
        1.0, gt=0, description="Epochs over the training data (if max_steps is -1)."
    )
    batch_size: int = Field(4, ge=1, description="Micro-batch size per device.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches per optimizer step."
    )
    max_length: int = Field(512, ge=16, description="Maximum tokens per training example.")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="Share of steps for LR warm-up.")
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Learning-rate schedule."
    )
    gradient_checkpointing: bool = Field(
        False, description="Trade ~30 % more compute for less activation memory."
    )
    seed: int = Field(42, description="Training seed.")
    logging_steps: int = Field(1, ge=1, description="Record the loss every N steps.")
    save_steps: int = Field(50, ge=1, description="Write a resumable checkpoint every N steps.")


class _TrainBase(Strict):
    backend: Literal["trl", "axolotl"] = Field(
        "trl", description="Training engine: TRL in-process, or Axolotl in its own venv."
    )
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA adapter settings.")
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters, description="Optimisation settings."
    )


class SFTTrain(_TrainBase):
    method: Literal["sft"] = Field(description="Supervised fine-tuning on `sft.jsonl`.")


class DPOTrain(_TrainBase):
    method: Literal["dpo"] = Field(
        description="Direct preference optimisation on `preference.jsonl`."
    )
    beta: float = Field(0.1, gt=0, description="DPO temperature: how far the policy may drift.")


class ORPOTrain(_TrainBase):
    method: Literal["orpo"] = Field(
        description="Odds-ratio preference optimisation (no reference model)."
    )
    beta: float = Field(0.1, gt=0, description="Weight of the odds-ratio term (ORPO lambda).")


TrainSpec = Annotated[SFTTrain | DPOTrain | ORPOTrain, Field(discriminator="method")]


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


# --------------------------------------------------------------------------- register


class RegisterSpec(Strict):
    registry: RecipePath | None = Field(
        None, description="Registry root directory; default `$FEINSCHLIFF_HOME/registry`."
    )
    max_lora_rank: int = Field(
        16, description="The serving vLLM's --max-lora-rank; adapters above it are refused."
    )

    @field_validator("max_lora_rank")
    @classmethod
    def _rank_allowed(cls, rank: int) -> int:
        if rank not in VLLM_LORA_RANKS:
            raise ValueError(f"vLLM's --max-lora-rank must be one of {list(VLLM_LORA_RANKS)}")
        return rank


class ScheduleSpec(Strict):
    cron: str = Field(description="Cron expression for scheduled retraining, e.g. '0 2 * * 1'.")
    timezone: str = Field("Europe/Berlin", description="IANA timezone of the cron expression.")

    @model_validator(mode="after")
    def _cron_has_five_fields(self) -> ScheduleSpec:
        if len(self.cron.split()) != 5:
            raise ValueError(f"cron {self.cron!r} must have 5 fields (min hour day month weekday)")
        return self


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

    @model_validator(mode="after")
    def _adapter_fits_server(self) -> Recipe:
        if self.train.lora.r > self.register.max_lora_rank:
            raise ValueError(
                f"train.lora.r={self.train.lora.r} exceeds register.max_lora_rank="
                f"{self.register.max_lora_rank}: the serving vLLM would refuse the adapter"
            )
        return self
