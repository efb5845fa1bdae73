"""After a resume, ``metrics.json``'s ``wall_seconds`` and ``train_cpu_seconds`` cover the whole
training: the time up to the resumed checkpoint (kept in it) plus the resumed part. They counted
the resumed part only. tokens/s stays the resumed run's own (README: tokens/s covers only what a
resumed run trained itself).

The kill is simulated: the first run's second step raises after checkpoint-1 was saved and
marked, as a run killed there leaves it; its first step burns 3 s of CPU."""

from __future__ import annotations

import json
import time

import pytest

from feinschliff.artifacts import DatasetRef, completed_hash
from feinschliff.recipe_loader import load_recipe
from tests.unit.test_train_review_fixes import DEMO, FAST, WORDS
from tests.unit.tiny_llama import make_tiny_llama, make_tiny_sft_ingest

BURN = 3.0  # CPU seconds of the first run's first step


class Killed(BaseException):
    """Stands for the SIGKILL: nothing catches it."""


def test_a_resumed_run_counts_the_time_before_its_checkpoint(tmp_path, monkeypatch, home):
    from trl import SFTTrainer

    from feinschliff.train.stage import run_train

    real_step = SFTTrainer.training_step

    def slow_then_killed(self, *args, **kwargs):
        if self.state.global_step == 0:
            end = time.process_time() + BURN
            while time.process_time() < end:
                pass
        elif self.state.global_step == 1:
            raise Killed
        return real_step(self, *args, **kwargs)

    model = make_tiny_llama(tmp_path / "model", WORDS)
    sets = [f"base_model.name={model}", *FAST]
    sets += ["train.hyperparameters.max_steps=2", "train.hyperparameters.save_steps=1"]
    recipe = load_recipe(DEMO, sets)
    data = make_tiny_sft_ingest(tmp_path / "data")
    ref = DatasetRef(path=str(data), sha256=completed_hash(data))
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(SFTTrainer, "training_step", slow_then_killed)
        with pytest.raises(Killed):
            run_train(recipe, ref, out)
    assert (out / "checkpoints" / "checkpoint-1" / ".complete").exists()
    run_train(recipe, ref, out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] == "checkpoint-1" and metrics["global_step"] == 2
    assert metrics["wall_seconds"] >= BURN
    assert metrics["train_cpu_seconds"] >= BURN
