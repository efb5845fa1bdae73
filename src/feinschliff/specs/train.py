"""Recipe section `train`: method, backend, LoRA, hyperparameters."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from feinschliff.specs.common import VLLM_LORA_RANKS, Strict

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
