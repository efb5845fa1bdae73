"""The training stage as a flow of its own, so it can run on a different work pool (GPUs)
than the rest of the loop. ``retrain`` calls it through its deployment
(``train_via_deployment``) when the recipe's deployment was synced with ``--train-pool``;
stage outputs live on storage both pools share, at the same path."""

from __future__ import annotations

import socket
from pathlib import Path
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.exceptions import ObjectNotFound

from feinschliff.artifacts import AdapterRef, DatasetRef, completed_hash, reusable
from feinschliff.pipeline import run_lock
from feinschliff.recipe import Recipe
from feinschliff.recipe_loader import load_recipe
from feinschliff.train import run_train
from feinschliff.train.stage import cache_key as train_cache_key


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
    """Train the recipe's adapter from an ingest (or mixed) output; returns the AdapterRef as a
    dict. Started by a `retrain` run (synced with `--train-pool`), which fills every parameter.

    Args:
        recipe_path: recipe YAML, as the calling retrain run got it (absolute or relative to
            this flow run's working directory).
        data_path: the finished ingest (or mixed) output to train on, at the path the retrain
            run wrote it: a path this worker cannot see fails first, naming the setup (before
            `out` is created).
        data_sha256: that output's content hash, recorded in metrics.json (`dataset_sha256`).
        out: the train output folder (adapter/, metrics.json, loss.png); a finished training
            of the same inputs there is reused, a killed one resumes from its checkpoints.
        overrides: `dotted.path=value` recipe overrides, as the retrain run got them.
        production: the registry's production version the retrain run recorded (None: there
            was none); a warm start (`train.init_from: production`) continues it if `pinned`.
        pinned: true: a warm start continues `production`; false: the registry's production
            now.
    """
    target = Path(out)
    # A retrain rerun after its own crash starts another train-stage run while the first may
    # still be training into the same checkpoints: the second fails at once, naming the first.
    with run_lock(target.parent, name=f".{target.name}.lock"):
        if not Path(data_path).is_dir():
            raise FileNotFoundError(
                f"the training data {data_path} does not exist on this worker "
                f"({socket.gethostname()}): the training pool must see the retrain run's stage "
                "outputs at the same path. Mount the shared storage (the cache PVC or volume) at "
                "the same path on both pools and set FEINSCHLIFF_HOME to it there (the image: "
                "/cache), and run `deployments sync` where that holds (README: Docker)"
            )
        recipe = load_recipe(recipe_path, overrides or [])
        data = DatasetRef(path=data_path, sha256=data_sha256)
        kwargs = {"production": production} if pinned else {}
        ref = run_train(recipe, data, target, **kwargs)
    return ref.model_dump()


def check_train_deployment(deployment: str) -> None:
    """Fail a retrain run at its start, before any stage, when its ``train_deployment`` does not
    exist: otherwise it ingested (and generated) first and then failed as "ObjectNotFound: None".
    Only read: a finished training of the same inputs is still reused without starting the
    training pool (``train_via_deployment``)."""
    with get_client(sync_client=True) as client:
        try:
            try:
                ident = UUID(deployment)  # run_deployment takes an id as well as FLOW/NAME
            except ValueError:
                client.read_deployment_by_name(deployment)
            else:
                client.read_deployment(ident)
            return
        except (ObjectNotFound, ValueError):  # ValueError: a name that is not FLOW/NAME
            pass
        found = client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[train_stage.name])), limit=20
        )
    existing = ", ".join(sorted(f"{train_stage.name}/{d.name}" for d in found)) or "none"
    raise ValueError(
        f"train_deployment {deployment} does not exist on this Prefect server (its "
        f"{train_stage.name} deployments: {existing}): `feinschliff deployments sync RECIPE "
        "--train-pool POOL` creates it, or leave train_deployment empty to train in this run"
    )


def train_via_deployment(
    deployment: str,
    recipe: Recipe,
    recipe_path: str,
    overrides: list[str],
    data: DatasetRef,
    out: Path,
    production: str | None,
) -> AdapterRef:
    """Run the train stage on another work pool through its deployment and wait for it. A
    training of the same inputs that already finished in ``out`` is reused without starting
    the other pool (a GPU node and image pull for nothing, on every unchanged scheduled run)."""
    from prefect.deployments import run_deployment

    if digest := _finished_training(recipe, data, out, production):
        get_run_logger().info("train: reusing finished adapter in %s", out)
        return AdapterRef(path=str(out), sha256=digest)
    run = run_deployment(
        deployment,
        parameters={
            "recipe_path": recipe_path,
            "overrides": overrides,
            "data_path": data.path,
            "data_sha256": data.sha256,
            "out": str(out),
            "production": production,
            "pinned": True,
        },
    )
    if run.state is None or not run.state.is_completed():
        # the run's message is the training's error: the failure notice shows it
        why = f": {run.state.message}" if run.state and run.state.message else ""
        raise RuntimeError(
            f"train deployment {deployment} ended {run.state and run.state.type.value}{why}"
        )
    digest = completed_hash(out)
    if digest is None:
        raise RuntimeError(f"{deployment} finished but {out} holds no complete adapter")
    return AdapterRef(path=str(out), sha256=digest)


def _finished_training(
    recipe: Recipe, data: DatasetRef, out: Path, production: str | None
) -> str | None:
    """The adapter hash when ``out`` holds a finished training of these inputs (the train
    stage's own reuse rule), else None."""
    try:
        return reusable(out, train_cache_key(recipe, data, production))
    except Exception:  # noqa: BLE001 - e.g. a base model only the training pool has: it decides
        return None
