"""Building blocks shared by every recipe section."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationInfo,
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

# Model names that are paths by their spelling; anything else is an alias or a Hugging Face id
# ("org/model" also contains a slash, so a slash alone does not make a path).
_PATH_PREFIXES = ("./", "../", "/", "~")


def is_local_path(name: str) -> bool:
    """True for ``./x``, ``../x``, ``/abs``, ``~/x`` (and ``.``/``..``): a folder, not an id."""
    return name in (".", "..") or name.startswith(_PATH_PREFIXES)


def _resolve_model_path(name: str, info: ValidationInfo) -> str:
    # Every stage reads a model name whatever its working directory; resolving a path
    # spelling here, like RecipePath, makes them all find the folder next to the recipe.
    # Aliases and hub ids stay as written.
    base = (info.context or {}).get("base_dir")
    if base is None or not is_local_path(name):
        return name
    path = Path(name).expanduser()
    return str((path if path.is_absolute() else Path(base) / path).resolve())


# A model reference: an alias, a hub id, or a folder written as a path (relative: to the recipe)
ModelName = Annotated[str, AfterValidator(_resolve_model_path)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _not_a_boolean(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


# pydantic's lax mode read `max_steps: true` as 1 and accepted `learning_rate: .inf`. Otherwise
# both stay lax: PyYAML reads `1e-4` (no dot) as a string, and sweep tools write `1000.0`
# (a fraction such as 2.5 is still refused).
Count = Annotated[int, BeforeValidator(_not_a_boolean)]
Number = Annotated[float, BeforeValidator(_not_a_boolean), AllowInfNan(False)]
