"""Recipe section `base_model`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from feinschliff.specs.common import ModelName, Strict, is_local_path

__all__ = ["BaseModelSpec", "is_local_path"]

# --------------------------------------------------------------------------- base model


class BaseModelSpec(Strict):
    name: ModelName = Field(
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
