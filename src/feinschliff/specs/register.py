"""Recipe sections `register` and `schedule`."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from feinschliff.specs.common import VLLM_LORA_RANKS, RecipePath, Strict

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
