"""Building blocks shared by every recipe section."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo

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
