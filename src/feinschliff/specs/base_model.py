"""Recipe section `base_model`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from feinschliff.specs.common import Strict

# --------------------------------------------------------------------------- base model

# Names that are paths by their spelling; anything else is an alias or a Hugging Face id
# ("org/model" also contains a slash, so a slash alone does not make a path).
_PATH_PREFIXES = ("./", "../", "/", "~")


def is_local_path(name: str) -> bool:
    """True for ``./x``, ``../x``, ``/abs``, ``~/x`` (and ``.``/``..``): a folder, not an id."""
    return name in (".", "..") or name.startswith(_PATH_PREFIXES)


class BaseModelSpec(Strict):
    name: str = Field(
        description="Model to fine-tune: a feinschliff alias (e.g. smollm2-135m-instruct, see "
        "`feinschliff models list`), a Hugging Face id, or a local HF folder written as a path "
        "(./x, ../x, /abs or ~/x; relative paths are relative to the recipe file).",
        min_length=1,
    )
    revision: str | None = Field(
        None, description="Git revision of a Hugging Face model (branch, tag or commit)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "bfloat16",
        description="Weight dtype for training and evaluation. Use float32 on CPU.",
    )

    @field_validator("name")
    @classmethod
    def _resolve_local_path(cls, name: str, info: ValidationInfo) -> str:
        # Every stage (train, evaluate, serving) reads this name, whatever its working directory;
        # resolving here, like RecipePath, makes them all find the folder next to the recipe.
        base = (info.context or {}).get("base_dir")
        if base is None or not is_local_path(name):
            return name
        path = Path(name).expanduser()
        return str((path if path.is_absolute() else Path(base) / path).resolve())
