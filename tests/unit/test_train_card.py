"""The adapter card states the LoRA dropout training applied, not only the recipe's value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feinschliff.artifacts import DatasetRef
from feinschliff.train.stage import write_model_card
from tests.unit.test_train_trl_backend import _pref_files, _recipe, _tiny_model

METRICS = {"loss_curve": [], "global_step": 1, "train_rows": 4}


def _card(tmp_path: Path, method: str, *sets: str) -> str:
    recipe = _recipe(tmp_path / "model", f"train.method={method}", *sets)
    path = tmp_path / "README.md"
    write_model_card(recipe, DatasetRef(path=str(tmp_path), sha256="0" * 64), METRICS, path)
    return next(line for line in path.read_text().splitlines() if line.startswith("| LoRA |"))


@pytest.mark.parametrize("method", ["dpo", "orpo", "kto"])
def test_the_card_says_preference_training_ran_without_dropout(tmp_path, method):
    line = _card(tmp_path, method, "train.lora.dropout=0.1")
    assert f"dropout=0.1 in adapter_config.json, 0 in training ({method} disables dropout)" in line


def test_the_card_gives_sfts_dropout_as_is(tmp_path):
    assert "dropout=0.1," in _card(tmp_path, "sft", "train.lora.dropout=0.1")


@pytest.mark.parametrize("method", ["dpo", "orpo", "kto"])
def test_trl_trains_preference_methods_without_lora_dropout(tmp_path, method):
    """The premise of the card line: TRL's preference trainers zero every dropout module,
    the LoRA path's included (``disable_dropout`` defaults to True)."""
    import torch
    from datasets import load_dataset
    from transformers import AutoTokenizer

    from feinschliff.train import trl_backend as tb

    model = _tiny_model(tmp_path / "model")
    recipe = _recipe(
        model,
        f"train.method={method}",
        "train.lora.dropout=0.3",
        "train.hyperparameters.max_length=32",
    )
    train = _pref_files(tmp_path)["train"]
    if method == "kto":
        rows = [json.loads(line) for line in train.read_text().splitlines()]
        train.write_text(
            "".join(
                json.dumps({"prompt": r["prompt"], "completion": r["chosen"], "label": i % 2 == 0})
                + "\n"
                for i, r in enumerate(rows)
            )
        )
    tok = AutoTokenizer.from_pretrained(model)
    tb.set_pad_token(tok, padding_free=False)
    tb.apply_chat_template_choice(tok, "chatml", assistant_only_loss=False)
    raw = load_dataset("json", data_files={"train": str(train)})
    trainer = tb.build_trainer(
        recipe,
        tb.load_model(recipe, str(model)),
        tok,
        raw,
        tmp_path / "ckpt",
        tb.lora_config(recipe),
        [],
    )
    rates = {
        m.p
        for name, m in trainer.model.named_modules()
        if "lora_dropout" in name and isinstance(m, torch.nn.Dropout)
    }
    assert rates == {0}


def test_the_card_counts_every_process_in_a_step(tmp_path):
    """batch_size is per process: a DDP run of 2 trained twice the rows per step the card said."""
    recipe = _recipe(tmp_path / "model", "train.launcher=accelerate", "train.num_processes=2")
    path = tmp_path / "README.md"
    metrics = METRICS | {"world_size": 2}
    write_model_card(recipe, DatasetRef(path=str(tmp_path), sha256="0" * 64), metrics, path)
    assert "| Steps | 1 (batch 2 x accumulation 1 x 2 processes) |" in path.read_text()
    write_model_card(recipe, DatasetRef(path=str(tmp_path), sha256="0" * 64), METRICS, path)
    assert "| Steps | 1 (batch 2 x accumulation 1) |" in path.read_text()
