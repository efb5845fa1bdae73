"""One training per output folder: a second `train` on a held --out is refused at once, naming
the holder (it deleted the running training's checkpoints); the train-stage flow, which holds
the same lock before it trains, still trains. And LoRA on lm_head is refused up front (exit 2,
nothing written): it failed only after the model was loaded, leaving a half-made output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feinschliff.artifacts import DatasetRef, completed_hash
from feinschliff.recipe_loader import load_recipe
from tests.cli_helpers import lock_held_elsewhere, run_cli
from tests.unit.test_train_review_fixes import DEMO, FAST, WORDS
from tests.unit.tiny_llama import make_tiny_llama, make_tiny_sft_ingest

pytestmark = pytest.mark.usefixtures("home")  # a private FEINSCHLIFF_HOME


def _sets(tmp_path: Path, *sets: str) -> list[str]:
    return [f"base_model.name={tmp_path / 'model'}", *FAST, *sets]


def _train_cli(tmp_path: Path, data: Path, out: Path, *sets: str) -> tuple[int, str]:
    args = [f"--set={s}" for s in _sets(tmp_path, *sets)]
    return run_cli("train", str(DEMO), "--data", str(data), "--out", str(out), *args)


@pytest.fixture
def holder(tmp_path):
    """Another process holding ``tmp_path/out``'s lock, as a running `train` does."""
    with lock_held_elsewhere(tmp_path, ".out.lock") as proc:
        yield proc


def test_a_second_train_on_a_held_output_is_refused_and_leaves_its_checkpoints(tmp_path, holder):
    make_tiny_llama(tmp_path / "model", WORDS)
    data = make_tiny_sft_ingest(tmp_path / "data")
    # the running training's state: another key (other --set values), a checkpoint
    ckpt = tmp_path / "out" / "checkpoints" / "checkpoint-1"
    ckpt.mkdir(parents=True)
    (tmp_path / "out" / ".inputs").write_text("another run's key")
    code, out = _train_cli(tmp_path, data, tmp_path / "out")
    assert code == 1
    assert f"is being written by another run (pid {holder.pid} on " in out
    assert ckpt.is_dir()  # prepare_out deleted it under the running training
    assert (tmp_path / "out" / ".inputs").read_text() == "another run's key"


def test_the_lock_is_released_and_a_lock_this_process_holds_is_not_waited_for(tmp_path):
    """The train-stage flow holds the output's lock itself, then calls run_train."""
    from feinschliff.pipeline import run_lock
    from feinschliff.train.stage import run_train

    make_tiny_llama(tmp_path / "model", WORDS)
    data = make_tiny_sft_ingest(tmp_path / "data")
    ref = DatasetRef(path=str(data), sha256=completed_hash(data))
    recipe = load_recipe(DEMO, _sets(tmp_path))
    with run_lock(tmp_path, name=".out.lock"):
        run_train(recipe, ref, tmp_path / "out")
    assert completed_hash(tmp_path / "out") is not None
    other = load_recipe(DEMO, _sets(tmp_path, "train.lora.r=4"))
    run_train(other, ref, tmp_path / "out")  # the first run's lock is gone with it
    assert json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())["r"] == 4


# --------------------------------------------------------------------------- up-front refusals


@pytest.mark.parametrize("targets", ["[lm_head]", "[q_proj, lm_head]"])
def test_lora_on_lm_head_is_refused_before_anything_is_written(tmp_path, targets):
    make_tiny_llama(tmp_path / "model", WORDS)
    data = make_tiny_sft_ingest(tmp_path / "data")
    code, out = _train_cli(tmp_path, data, tmp_path / "out", f"train.lora.target_modules={targets}")
    assert code == 2
    assert "train.lora.target_modules: 'lm_head' is the output layer" in out
    assert not (tmp_path / "out").exists()
