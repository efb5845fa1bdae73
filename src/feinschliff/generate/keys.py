"""What a generate output and a teacher reply are keyed on (the stage's two cache levels).

- output: ``cache_key`` over everything a finished output depends on: the section minus
  operational knobs, template and filter versions, seed files, the feedback's rows (its
  held-out prompts are always excluded, its other prompts with ``dedup_against_feedback``), the
  eval sets rows are decontaminated against, and the content of a local teacher or judge model
  folder (a folder replaced by another model must not reuse the old model's rows).
- request: ``request_cache_path`` names one reply cache per endpoint and model; a local
  model's folder fingerprint is part of that name too (and of each request's identity, see
  ``teacher.TeacherLLM._cache_identity``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feinschliff import models
from feinschliff.artifacts import COMPLETE, completed_hash, input_key, rows_sha256, sha256_file
from feinschliff.generate.postprocess import FILTERS_VERSION
from feinschliff.generate.templates import TEMPLATE_VERSION
from feinschliff.ngrams import N
from feinschliff.recipe import Recipe, evaluated_sets
from feinschliff.specs.evaluate import USECASE_TASK
from feinschliff.specs.generate import GenerateSpec, LocalTeacher, OpenAITeacher

if TYPE_CHECKING:
    from feinschliff.ingest.decontam import EvalSets

# Knobs that change how fast or how far a run gets, not what a finished run contains.
OPERATIONAL = {"concurrency", "retries", "backoff_s", "budget", "mix"}


def cache_key(
    spec: GenerateSpec,
    feedback: Any,
    *,
    ngram: int = N,
    eval_sets: Sequence[str] = (),
) -> str:
    """Hash of everything a finished output depends on (and of nothing it does not).

    ``feedback``: the ingest output (a ``DatasetRef``) or None; ``ngram``: the decontamination
    n (the recipe's ``feedback.decontamination.ngram``), the held-out guard's too;
    ``eval_sets``: the eval sets rows are decontaminated against (``eval_set_names(recipe)``),
    by name and file content."""
    judge = spec.preference.judge if spec.preference and spec.preference.judge else None
    # The held-out guard runs on every feedback with the same n-gram length as the eval sets;
    # without decontamination n is keyed here alone (appended: the other keys stay as they were).
    guard = ("heldout_ngram", ngram) if feedback and not spec.filters.decontaminate else None
    return input_key(
        "generate",
        TEMPLATE_VERSION,
        FILTERS_VERSION,
        spec.model_dump(mode="json", exclude=OPERATIONAL),
        _seed_fingerprint(spec),
        # always: its held-out prompts are excluded whatever dedup_against_feedback says
        rows_sha256(feedback) if feedback else None,
        (_eval_fingerprint(eval_sets), ngram) if spec.filters.decontaminate else None,
        model_fingerprint(spec.teacher),
        model_fingerprint(judge) if judge is not None else None,
        *([guard] if guard else []),
    )


def recipe_cache_key(recipe: Recipe, feedback: Any) -> str:
    """:func:`cache_key` as ``run_generate`` computes it for ``recipe`` (the flow's key too)."""
    assert recipe.generate is not None
    ngram = recipe.feedback.decontamination.ngram  # ingest's n, the gate's too
    return cache_key(recipe.generate, feedback, ngram=ngram, eval_sets=eval_set_names(recipe))


def eval_set_names(recipe: Recipe) -> list[str]:
    """The eval sets generated rows are decontaminated against: ingest's, the recipe's
    ``evaluate.tasks`` and ``feedback.decontamination.eval_sets`` (task names or JSONL paths).
    Generate's own switch is ``generate.filters.decontaminate``. ``usecase_heldout`` is left
    out: ingest's own held-out split, no eval set; generated rows holding one of its prompts
    are dropped separately (``postprocess.HeldoutGuard``)."""
    names = [*evaluated_sets(recipe), *recipe.feedback.decontamination.eval_sets]
    return [n for n in names if n != USECASE_TASK]


def reusable_output(out: Path, key: str) -> str | None:
    digest = completed_hash(out)
    if digest is None:
        return None
    marker = json.loads((out / COMPLETE).read_text())
    if marker.get("key") != key or marker.get("stopped_by_budget"):
        return None
    return digest


def stopped_by_budget(out: Path) -> bool:
    """A finished output that stopped on its budget: a rerun continues it."""
    if completed_hash(out) is None:
        return False
    return bool(json.loads((out / COMPLETE).read_text()).get("stopped_by_budget"))


def model_fingerprint(model: OpenAITeacher | LocalTeacher) -> Any:
    """What identifies a local model's content beyond its name (None for an endpoint or a hub
    id: the name is all there is): ``local_model_fingerprint``, as the train stage keys its
    base model."""
    if model.kind == "openai":
        return None
    return local_model_fingerprint(model.model)


def local_model_fingerprint(name: str) -> Any:
    """``models.model_fingerprint`` with mtimes, for the output key (None for a hub id or a
    missing folder)."""
    return models.model_fingerprint(name)


def local_model_content_identity(name: str) -> Any:
    """A local model's content identity for its request cache: ``models.model_fingerprint``
    without mtimes (a ``cp -r`` of the folder or a re-fetched alias keeps its cached replies).
    None for a hub id or a missing folder."""
    return models.model_fingerprint(name, mtimes=False)


def request_cache_path(model: OpenAITeacher | LocalTeacher) -> Path:
    """One request cache per endpoint and model (shared by every recipe that uses them); a
    local model folder holding another model gets another cache (its content identity,
    ``local_model_content_identity``: copied files with new mtimes keep the cache)."""
    if model.kind == "openai":
        ident = f"{model.base_url}|{model.model}"
    else:
        fingerprint = local_model_content_identity(model.model)
        ident = f"local|{model.model}"
        if fingerprint is not None:
            ident += "|" + json.dumps(fingerprint, sort_keys=True)
    name = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return models.feinschliff_home() / "cache" / "generate" / f"requests-{name}.jsonl"


def _seed_fingerprint(spec: GenerateSpec) -> dict[str, str]:
    from feinschliff.generate.seeds import document_files

    files = []
    if spec.seeds.topics and Path(spec.seeds.topics).is_file():
        files.append(Path(spec.seeds.topics))
    if spec.seeds.documents and Path(spec.seeds.documents).is_dir():
        files += document_files(Path(spec.seeds.documents))[0]
    return {str(p): sha256_file(p) for p in files}


def _find_eval_sets(names: Sequence[str]) -> EvalSets:
    from feinschliff.ingest.decontam import find_eval_sets

    return find_eval_sets(names)


def _eval_fingerprint(names: Sequence[str]) -> dict[str, Any]:
    # The eval sets' data files, found as ingest finds them; without importing the evaluate
    # package (matplotlib, lm-eval): a cache hit must stay instant.
    sets = _find_eval_sets(names)
    files = {name: sha256_file(path) for name, path in sets.files.items()}
    return {"files": files, "unchecked": sets.unchecked}
