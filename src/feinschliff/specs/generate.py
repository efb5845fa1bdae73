"""Recipe section `generate`: synthetic data generation."""

from __future__ import annotations

from pydantic import Field

from feinschliff.specs.common import RecipePath, Strict

# --------------------------------------------------------------------------- generate


class GenerateSpec(Strict):
    seeds: RecipePath = Field(description="Topics file (one topic per line) or documents folder.")
    num_instructions: int = Field(50, ge=1, description="Instructions to generate.")
    teacher_model: str = Field(description="Model name served by the teacher endpoint.")
    teacher_base_url: str = Field(description="OpenAI-compatible base URL of the teacher.")
