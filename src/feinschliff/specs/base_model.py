"""Recipe section `base_model`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from feinschliff.specs.common import Strict

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
