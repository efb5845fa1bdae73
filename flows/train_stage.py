"""The training stage as a flow of its own, so it can run on a different work pool (GPUs)
than the rest of the loop. ``retrain`` calls it through its deployment when the recipe's
deployment was synced with ``--train-pool``; stage outputs live on storage both pools share."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from feinschliff.artifacts import DatasetRef
from feinschliff.pipeline import run_lock
from feinschliff.recipe_loader import load_recipe
from feinschliff.train import run_train


@flow(name="train-stage")
def train_stage(
    recipe_path: str,
    data_path: str,
    data_sha256: str,
    out: str,
    overrides: list[str] | None = None,
    production: str | None = None,
    pinned: bool = False,
) -> dict:
    """Train the recipe's adapter from an ingest output; returns the AdapterRef as a dict.

    ``pinned``: a warm start continues ``production`` (None: there was none), the version the
    calling retrain run recorded; otherwise the registry's production now.
    """
    target = Path(out)
    # A retrain rerun after its own crash starts another train-stage run while the first may
    # still be training into the same checkpoints: the second fails at once, naming the first.
    with run_lock(target.parent, name=f".{target.name}.lock"):
        recipe = load_recipe(recipe_path, overrides or [])
        data = DatasetRef(path=data_path, sha256=data_sha256)
        kwargs = {"production": production} if pinned else {}
        ref = run_train(recipe, data, target, **kwargs)
    return ref.model_dump()
