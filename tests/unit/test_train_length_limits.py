"""Rows longer than train.hyperparameters.max_length: TRL dropped (DPO, KTO) or cut them
silently, ORPO turned the whole adapter NaN over one such row, metrics.json and the model card
counted the rows given, not those trained, and an empty train or eval set ended in a traceback.
A tiny real model (a one-layer Llama, a word-level tokenizer) trains each case in seconds."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from feinschliff.artifacts import DatasetRef, completed_hash, mark_complete
from feinschliff.recipe_loader import load_recipe
from tests.unit.tiny_llama import make_tiny_llama

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo-de.yaml"
WORDS = ["[UNK]", "<|im_start|>", "<|im_end|>", "user", "assistant", "Frage", "Antwort"]
LONG = " ".join(["Frage"] * 40)  # ~45 tokens rendered: fills max_length=32 on its own


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))


@pytest.fixture
def model(tmp_path) -> Path:
    return make_tiny_llama(tmp_path / "model", WORDS)


def _recipe(model: Path, *sets: str):
    return load_recipe(
        DEMO,
        [
            f"base_model.name={model}",
            "train.chat_template=chatml",
            "train.hyperparameters.max_steps=2",
            "train.hyperparameters.batch_size=2",
            "train.hyperparameters.max_length=32",
            "train.hyperparameters.eval_fraction=0",
            "train.lora.r=2",
            *sets,
        ],
    )


def _pair(prompt: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": "Antwort"}],
        "rejected": [{"role": "assistant", "content": "Frage Antwort Antwort"}],
    }


def _kto(prompt: str, label: bool) -> dict:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "completion": [{"role": "assistant", "content": "Antwort Antwort"}],
        "label": label,
    }


def _chat(prompt: str, answer: str = "Antwort Antwort") -> dict:
    msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return {"messages": msgs}


def _files(tmp_path: Path, train: list[dict], evals: list[dict] | None = None) -> dict:
    folder = tmp_path / "rows"
    folder.mkdir(parents=True, exist_ok=True)
    files = {"train": folder / "train.jsonl"}
    if evals is not None:
        files["eval"] = folder / "eval.jsonl"
    for name, rows in (("train", train), ("eval", evals or [])):
        if name in files:
            files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


def _ingest(path: Path, name: str, rows: list[dict]) -> DatasetRef:
    path.mkdir(parents=True)
    (path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    mark_complete(path, stage="ingest")
    return DatasetRef(path=str(path), sha256=completed_hash(path))


def _finite(adapter: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(adapter / "adapter_model.safetensors"))
    return all(torch.isfinite(t).all() for t in weights.values())


# --------------------------------------------------------------------------- ORPO, NaN


def test_orpo_drops_a_prompt_that_fills_max_length_instead_of_training_nan(tmp_path, model):
    """TRL's ORPO kept the row with an empty completion: a mean log-prob over no token is NaN,
    every adapter weight became NaN, and the run logged loss 0.0 and exited 0."""
    from feinschliff.train.trl_backend import train_trl

    rows = [_pair("Frage Frage"), _pair(LONG), _pair("Frage")]
    recipe = _recipe(model, "train.method=orpo")
    metrics = train_trl(recipe, str(model), _files(tmp_path, rows), tmp_path / "out")
    assert _finite(tmp_path / "out" / "adapter")
    assert (metrics["train_rows"], metrics["dropped_train_rows"]) == (2, 1)
    assert all(e["loss"] == e["loss"] for e in metrics["loss_curve"])  # no NaN


def test_a_diverged_training_fails_instead_of_finishing_with_a_nan_adapter(tmp_path, model, caplog):
    """Only `register` found NaN weights; train exited 0 and logged the NaN loss as 0.0."""
    from feinschliff.train.stage import TrainError, run_train

    data = _ingest(tmp_path / "data", "sft.jsonl", [_chat("Frage Frage")] * 4)
    recipe = _recipe(
        model,
        "train.hyperparameters.learning_rate=1e30",
        "train.hyperparameters.lr_scheduler=constant",
    )
    caplog.set_level(logging.INFO, logger="feinschliff.train")
    with pytest.raises(TrainError, match="training diverged: NaN or inf in"):
        run_train(recipe, data, tmp_path / "out")
    assert completed_hash(tmp_path / "out") is None  # not a finished output
    assert "loss nan" in caplog.text  # not 0.0


# --------------------------------------------------------------------------- counted drops


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_rows_trl_drops_for_max_length_are_counted_not_reported_as_trained(
    tmp_path, model, method, caplog
):
    from feinschliff.train.stage import run_train

    if method == "dpo":
        name, rows = "preference.jsonl", [_pair(LONG + f" Frage{'Frage' * i}") for i in range(3)]
        rows += [_pair("Frage"), _pair("Frage Frage")]
    else:
        name, rows = "kto.jsonl", [_kto(LONG, i % 2 == 0) for i in range(3)]
        rows += [_kto("Frage", True), _kto("Frage Frage", False)]
    data = _ingest(tmp_path / "data", name, rows)
    caplog.set_level(logging.WARNING, logger="feinschliff.train")
    ref = run_train(_recipe(model, f"train.method={method}"), data, tmp_path / "out")
    metrics = json.loads((Path(ref.path) / "metrics.json").read_text())
    assert (metrics["train_rows"], metrics["dropped_train_rows"]) == (2, 3)
    assert "3 of 5 training rows dropped" in caplog.text
    assert "train.hyperparameters.max_length=32" in caplog.text
    card = (Path(ref.path) / "adapter" / "README.md").read_text()
    assert "| Training rows | 2 (0 replayed; 3 more dropped: their prompt fills max length) |" in (
        card
    )


def test_no_row_within_max_length_is_a_train_error_naming_the_setting(tmp_path, model):
    """It was `ValueError: num_samples should be a positive integer value` (a traceback)."""
    from feinschliff.train.stage import TrainError, run_train

    data = _ingest(tmp_path / "data", "preference.jsonl", [_pair(LONG)] * 3)
    with pytest.raises(TrainError, match=r"no training row fits train\.hyperparameters"):
        run_train(_recipe(model, "train.method=dpo"), data, tmp_path / "out")


def test_an_eval_set_max_length_empties_skips_the_final_eval_and_its_rerun_finishes(
    tmp_path, model, caplog
):
    """KeyError: 'eval_loss' after training, and again on every rerun from the final
    checkpoint: the run could never finish."""
    import shutil

    from feinschliff.train.trl_backend import train_trl

    files = _files(tmp_path, [_pair("Frage")] * 4, evals=[_pair(LONG)] * 2)
    recipe = _recipe(model, "train.method=dpo", "train.hyperparameters.save_steps=1")
    caplog.set_level(logging.WARNING, logger="feinschliff.train")
    metrics = train_trl(recipe, str(model), files, tmp_path / "out")
    assert metrics["eval_loss"] is None
    assert (metrics["eval_rows"], metrics["dropped_eval_rows"]) == (0, 2)
    assert "no eval row is left" in caplog.text
    shutil.rmtree(tmp_path / "out" / "adapter")  # killed after the final checkpoint
    rerun = train_trl(recipe, str(model), files, tmp_path / "out")
    assert rerun["resumed_from"] == "checkpoint-2" and rerun["eval_loss"] is None


def test_sft_rows_whose_answer_starts_past_max_length_are_counted(tmp_path, model, caplog):
    """Plain SFT trains such a row on its prompt alone; nothing said so."""
    from feinschliff.train.stage import run_train

    rows = [_chat(LONG), _chat("Frage"), _chat("Frage Frage")]
    data = _ingest(tmp_path / "data", "sft.jsonl", rows)
    caplog.set_level(logging.WARNING, logger="feinschliff.train")
    ref = run_train(_recipe(model), data, tmp_path / "out")
    metrics = json.loads((Path(ref.path) / "metrics.json").read_text())
    assert (metrics["train_rows"], metrics["dropped_train_rows"]) == (3, 0)
    assert metrics["rows_answer_past_max_length"] == 1
    assert "1 of 3 training rows train on their prompt only" in caplog.text
    card = (Path(ref.path) / "adapter" / "README.md").read_text()
    assert "1 of them train on no answer token" in card


def test_sft_with_answer_only_loss_counts_the_rows_trl_dropped(tmp_path, model):
    from feinschliff.train.trl_backend import train_trl

    rows = [_chat(LONG), _chat("Frage"), _chat("Frage Frage")]
    recipe = _recipe(model, "train.assistant_only_loss=true")
    metrics = train_trl(recipe, str(model), _files(tmp_path, rows), tmp_path / "out")
    assert (metrics["train_rows"], metrics["dropped_train_rows"]) == (2, 1)
    assert metrics["rows_answer_past_max_length"] == 0  # dropped, not trained on the prompt
