"""A full or read-only ``FEINSCHLIFF_HOME`` fails a training before it trains, naming the file:
the replay snapshot (``home/datasets/<sha>/<method>.jsonl``) was written only after the whole
training, failed there with a traceback naming no path, and left its ``.tmp`` file forever.

The full disk is simulated: ``write_jsonl`` raises ``OSError(ENOSPC)`` for the snapshot's temp
file after writing part of it (CI may not mount a small tmpfs)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from feinschliff.artifacts import DatasetRef, completed_hash
from feinschliff.recipe_loader import load_recipe
from tests.unit.test_train_review_fixes import DEMO, FAST, WORDS
from tests.unit.tiny_llama import make_tiny_llama, make_tiny_sft_ingest, train_until_the_backend


def test_a_full_home_fails_before_training_naming_the_file(tmp_path, monkeypatch, home):
    from feinschliff.train import data as train_data
    from feinschliff.train import stage
    from feinschliff.train.checks import TrainError

    real_write = train_data.write_jsonl

    def full_disk(path: Path, rows):
        if home in path.parents:  # the snapshot: half written, then the disk is full
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, rows)

    def backend(*args, **kwargs):
        raise AssertionError("trained although the rows cannot be kept")

    monkeypatch.setattr(train_data, "write_jsonl", full_disk)
    monkeypatch.setattr(stage, "_run_backend", backend)
    model = make_tiny_llama(tmp_path / "model", WORDS)
    recipe = load_recipe(DEMO, [f"base_model.name={model}", *FAST])
    data = make_tiny_sft_ingest(tmp_path / "data")
    ref = DatasetRef(path=str(data), sha256=completed_hash(data))
    with pytest.raises(TrainError) as err:
        stage.run_train(recipe, ref, tmp_path / "out")
    snapshots = home / "datasets"
    target = next(snapshots.iterdir()) / "sft.jsonl"
    assert str(target) in str(err.value) and "No space left on device" in str(err.value)
    assert [p.name for p in target.parent.iterdir()] == []  # no .tmp left behind


def test_the_snapshot_is_kept_before_the_backend_trains(tmp_path, monkeypatch, home):
    from feinschliff.train import stage

    seen = []

    def backend(recipe, model_path, files, out, warm):
        seen.extend(p.name for p in (home / "datasets").glob("*/*"))
        raise stage.TrainError("stop here")

    monkeypatch.setattr(stage, "_run_backend", backend)
    train_until_the_backend(tmp_path, WORDS, DEMO, FAST)
    assert seen == ["sft.jsonl"]
