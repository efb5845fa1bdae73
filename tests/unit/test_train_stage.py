"""The train stage refuses, before loading anything, what cannot run as configured."""

from __future__ import annotations

from pathlib import Path

import pytest

from feinschliff.artifacts import DatasetRef
from feinschliff.recipe_loader import load_recipe
from feinschliff.train.stage import TrainError, run_train

ROOT = Path(__file__).resolve().parents[2]


def test_a_training_too_large_for_its_gpu_is_refused_with_the_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    recipe = load_recipe(
        ROOT / "recipes" / "support-de-8b.yaml",
        ["train.gpu=rtx-4090", "train.hyperparameters.gradient_checkpointing=false"],
    )
    data = DatasetRef(path=str(tmp_path / "data"), sha256="0" * 64)
    with pytest.raises(TrainError) as err:
        run_train(recipe, data, tmp_path / "out")
    msg = str(err.value)
    assert "does not fit train.gpu=rtx-4090" in msg
    for row in ("weights", "optimizer_states", "activations", "assumptions"):
        assert row in msg
    assert not (tmp_path / "out").exists()  # refused before any output or model load
