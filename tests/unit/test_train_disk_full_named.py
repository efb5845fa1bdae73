"""A disk that fills while a checkpoint is saved is a TrainError naming the folder and "no space
left", not tokenizers' bare ``Exception: No space left on device (os error 28)`` after an
83-line traceback.

The full disk is simulated at the same boundary: the tokenizer's save (``TokenizersBackend.
_save_pretrained``, whose Rust writer raises that bare Exception) raises it for checkpoints
(CI may not mount a small tmpfs)."""

from __future__ import annotations

import pytest

from feinschliff.artifacts import DatasetRef, completed_hash
from feinschliff.recipe_loader import load_recipe
from tests.unit.test_train_review_fixes import DEMO, FAST, WORDS
from tests.unit.tiny_llama import make_tiny_llama, make_tiny_sft_ingest


def test_a_full_disk_at_a_checkpoint_names_the_folder(tmp_path, monkeypatch, home):
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    from feinschliff.train.checks import TrainError
    from feinschliff.train.stage import run_train

    real_save = TokenizersBackend._save_pretrained

    def full_disk(self, save_directory, *args, **kwargs):
        if "checkpoint-" in str(save_directory):
            raise Exception("No space left on device (os error 28)")  # as tokenizers raises it
        return real_save(self, save_directory, *args, **kwargs)

    monkeypatch.setattr(TokenizersBackend, "_save_pretrained", full_disk)
    model = make_tiny_llama(tmp_path / "model", WORDS)
    recipe = load_recipe(
        DEMO, [f"base_model.name={model}", *FAST, "train.hyperparameters.save_steps=1"]
    )
    data = make_tiny_sft_ingest(tmp_path / "data")
    out = tmp_path / "out"
    with pytest.raises(TrainError) as err:
        run_train(recipe, DatasetRef(path=str(data), sha256=completed_hash(data)), out)
    msg = str(err.value)
    assert "no space left on device" in msg and str(out / "checkpoints" / "checkpoint-1") in msg


def test_other_save_errors_pass_unchanged(tmp_path):
    from feinschliff.train.trl_checkpoints import is_disk_full, naming_disk_full

    with pytest.raises(ValueError, match="bad dtype"), naming_disk_full(tmp_path):
        raise ValueError("bad dtype")
    assert not is_disk_full(PermissionError(13, "Permission denied"))
    assert is_disk_full(OSError(28, "No space left on device"))
    assert is_disk_full(Exception("Error while serializing: IoError(Os { kind: StorageFull })"))
