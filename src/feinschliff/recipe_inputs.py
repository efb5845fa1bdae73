"""Files a recipe reads that must exist where it runs: feedback exports, JSONL eval sets to
decontaminate against, seed topics and documents, and models given as local folders (base
model, local teacher or judge).

The schema cannot check them: a recipe may be written for a worker whose volumes this machine
lacks. ``feinschliff validate`` lists them as warnings (``--strict``: as problems), so a typo in
a path shows up when the recipe is edited, not when a scheduled run reaches that stage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from feinschliff.recipe import Recipe
from feinschliff.specs.common import is_local_path


def missing_inputs(recipe: Recipe) -> list[tuple[str, str]]:
    """(dotted recipe path, the path as resolved) of each named input that does not exist."""
    return [(where, path) for where, path in _inputs(recipe) if not Path(path).exists()]


def _inputs(recipe: Recipe) -> Iterator[tuple[str, str]]:
    for i, source in enumerate(recipe.feedback.sources):
        if source.path is not None:  # a live pull has no file
            yield f"feedback.sources.{i}.path", source.path
    for i, name in enumerate(recipe.feedback.decontamination.eval_sets):
        if name.lower().endswith(".jsonl"):  # a task name is found in the bundled tasks
            yield f"feedback.decontamination.eval_sets.{i}", name
    if is_local_path(recipe.base_model.name):  # aliases and hub ids are fetched, not found
        yield "base_model.name", recipe.base_model.name
    gen = recipe.generate
    if gen is None:
        return
    for name in ("topics", "documents"):
        if (value := getattr(gen.seeds, name)) is not None:
            yield f"generate.seeds.{name}", value
    models = [("generate.teacher", gen.teacher)]
    if gen.preference is not None and gen.preference.judge is not None:
        models.append(("generate.preference.judge", gen.preference.judge))
    for where, model in models:
        if model.kind == "transformers" and is_local_path(model.model):
            yield f"{where}.model", model.model
