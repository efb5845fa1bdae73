"""The train-stage flow on another work pool: paths from the retrain run that its worker
cannot see fail at once with the setup to fix, not as a training error after preflight."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_training_data_missing_on_this_worker_names_the_shared_storage(tmp_path):
    from flows.train_stage import train_stage

    elsewhere = tmp_path / "home-of-the-cpu-worker" / "runs" / "support-de-demo"
    with pytest.raises(FileNotFoundError) as exc:
        train_stage.fn(
            recipe_path=str(ROOT / "recipes" / "demo-de.yaml"),
            data_path=str(elsewhere / "ingest"),
            data_sha256="0" * 64,
            out=str(elsewhere / "train"),
        )
    message = str(exc.value)
    assert f"{elsewhere / 'ingest'} does not exist on this worker" in message
    assert "same path on both pools" in message and "FEINSCHLIFF_HOME" in message
    assert not (elsewhere / "train").exists()  # no output folder made in the wrong place


def test_an_unchanged_rerun_does_not_start_the_training_pool(demo_ingest, home, monkeypatch):
    """With `--train-pool`, retrain called the GPU deployment on every run: a scheduled run
    whose pull found nothing new scaled up a GPU node and pulled the image only for the train
    stage to find its finished adapter. retrain now checks the stage's own reuse rule first."""
    import logging

    import prefect.deployments

    import flows.train_stage as stage
    from feinschliff.artifacts import mark_complete
    from feinschliff.recipe_loader import load_recipe
    from feinschliff.train.stage import cache_key

    started = []

    def run_deployment(*args, **kwargs):
        started.append(args)
        raise RuntimeError("the training pool was started")

    monkeypatch.setattr(prefect.deployments, "run_deployment", run_deployment)
    monkeypatch.setattr(stage, "get_run_logger", lambda: logging.getLogger("test"))
    recipe = load_recipe(ROOT / "recipes" / "demo-de.yaml")
    out = home / "runs" / recipe.use_case / "train"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    digest = mark_complete(out, stage="train", key=cache_key(recipe, demo_ingest, None))

    def train():
        return stage.train_via_deployment(
            "train-stage/x", recipe, "recipes/demo-de.yaml", [], demo_ingest, out, None
        )

    assert train().sha256 == digest and started == []
    mark_complete(out, stage="train", key="other inputs")  # another recipe or other rows
    with pytest.raises(RuntimeError, match="training pool was started"):
        train()
    assert len(started) == 1


def test_a_failed_training_run_says_why(demo_ingest, home, monkeypatch, tmp_path):
    """The retrain run's failure (and its notice) said only `ended StateType.FAILED`."""
    import types

    import prefect.deployments
    from prefect.states import Failed

    import flows.train_stage as stage
    from feinschliff.recipe_loader import load_recipe

    failed = Failed(message="Flow run encountered an exception: TrainError: CUDA out of memory")
    monkeypatch.setattr(
        prefect.deployments, "run_deployment", lambda *a, **k: types.SimpleNamespace(state=failed)
    )
    recipe = load_recipe(ROOT / "recipes" / "demo-de.yaml")
    with pytest.raises(RuntimeError) as exc:
        stage.train_via_deployment(
            "train-stage/x", recipe, "recipes/demo-de.yaml", [], demo_ingest, tmp_path / "t", None
        )
    assert str(exc.value) == (
        "train deployment train-stage/x ended FAILED: Flow run encountered an exception: "
        "TrainError: CUDA out of memory"
    )
