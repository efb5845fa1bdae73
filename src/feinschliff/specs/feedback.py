"""Recipe section `feedback`: sources and derivation rules (owned by ingest)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from feinschliff.specs.common import RecipePath, Strict

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
