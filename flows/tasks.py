"""Prefect task wrappers: policy (retries, timeouts, caching) in the decorator, one library call
in the body. Business logic lives in ``feinschliff``; nothing here that a CLI user would miss.

Caching: every stage's output directory carries a completeness marker keyed by the content
hashes of its inputs, so a rerun reuses finished stages inside the library; Prefect's own
result cache is therefore off (``NO_CACHE``) until the orchestration issue adds persisted
results with the same keys.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from feinschliff.artifacts import AdapterRef, DatasetRef, ReportRef
from feinschliff.evaluate import run_evaluate
from feinschliff.gate import Decision, decide_promotion
from feinschliff.ingest import run_ingest
from feinschliff.pipeline import lineage, read_report, registry_root
from feinschliff.recipe import Recipe
from feinschliff.registry import production_adapter, promote, register_adapter
from feinschliff.train import run_train


@task(name="ingest", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def ingest_task(recipe: Recipe, out: Path) -> DatasetRef:
    return run_ingest(recipe.feedback, out)


@task(name="train", cache_policy=NO_CACHE, timeout_seconds=24 * 3600)
def train_task(recipe: Recipe, data: DatasetRef, out: Path) -> AdapterRef:
    # No blind retries: a rerun resumes from the last complete checkpoint instead.
    return run_train(recipe, data, out)


@task(name="evaluate", cache_policy=NO_CACHE, timeout_seconds=6 * 3600)
def evaluate_task(recipe: Recipe, adapter: AdapterRef, out: Path) -> ReportRef:
    production = production_adapter(registry_root(recipe), recipe.use_case)
    return run_evaluate(recipe, adapter, out, production=production)


@task(name="gate", cache_policy=NO_CACHE)
def gate_task(recipe: Recipe, report: ReportRef) -> Decision:
    return decide_promotion(read_report(report), recipe.gate)


@task(name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def register_task(
    recipe: Recipe, data: DatasetRef, adapter: AdapterRef, report: ReportRef, decision: Decision
) -> str:
    root = registry_root(recipe)
    version = register_adapter(
        root, recipe.use_case, adapter, lineage(recipe, data, adapter, report, decision)
    )
    promote(root, recipe.use_case, version, why="gate passed", decision=decision.model_dump())
    return version
