"""Synthetic German training data with distilabel: self-instruct, answers, AI-feedback pairs.

``run_generate(recipe, out, feedback)`` writes a dataset in ingest's contract;
``merge_datasets(feedback, generated, mix, out)`` mixes it with the feedback-derived data.
Module map: ``seeds`` (topics, documents, PII), ``templates`` (German prompts, schemas),
``teacher`` (the distilabel LLM: cache, budget, retries), ``ledger`` (shared state of a run),
``tasks`` (the pipeline), ``child`` (its process), ``watch`` (the stage's watch on it),
``select``/``postprocess`` (rows, drops, filters), ``keys`` (cache keys), ``outlock`` (one run
per output folder), ``stage`` (the stage), ``mix`` (the merge).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from feinschliff.generate.mix import merge_datasets
    from feinschliff.generate.stage import GenerateError, run_generate

__all__ = ["GenerateError", "merge_datasets", "run_generate"]


def __getattr__(name: str) -> Any:
    # Lazy: importing the package must not pull in distilabel or Presidio.
    if name == "merge_datasets":
        from feinschliff.generate.mix import merge_datasets

        return merge_datasets
    if name in ("GenerateError", "run_generate"):
        from feinschliff.generate import stage

        return getattr(stage, name)
    raise AttributeError(name)
