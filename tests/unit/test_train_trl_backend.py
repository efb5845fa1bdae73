"""TRL backend: the pad token choice behind comparable token counts (no model), and a tiny real
model (a one-layer Llama, a word-level tokenizer) for what only a built trainer shows."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from feinschliff.train.trl_backend import set_pad_token
from tests.unit.tiny_llama import make_tiny_llama


def _tok(pad, eos="<|im_end|>", unk="<|endoftext|>"):
    return SimpleNamespace(pad_token=pad, eos_token=eos, unk_token=unk)


@pytest.mark.parametrize(
    ("tok", "padding_free", "want"),
    [
        # SmolLM2: pad = eos. Padding-free batches count input_ids != pad, so pad must not be a
        # token every conversation contains; padded batches count by attention mask: unchanged.
        (_tok("<|im_end|>"), True, "<|endoftext|>"),
        (_tok("<|im_end|>"), False, "<|im_end|>"),
        (_tok(None), False, "<|im_end|>"),
        (_tok(None), True, "<|endoftext|>"),
        (_tok("<pad>"), True, "<pad>"),  # a real pad token stays
        (_tok(None, unk=None), True, "<|im_end|>"),  # nothing better to use
        (_tok(None, unk="<|im_end|>"), True, "<|im_end|>"),
    ],
)
def test_pad_token_is_distinct_from_eos_for_padding_free_batches(tok, padding_free, want):
    set_pad_token(tok, padding_free=padding_free)
    assert tok.pad_token == want


# --------------------------------------------------------------------------- tiny real trainer

WORDS = ["[UNK]", "<|im_start|>", "<|im_end|>", "user", "assistant", "Frage", "Antwort"]
ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo-de.yaml"


def _tiny_model(path: Path, *, eos: str | None = "<|im_end|>") -> Path:
    """A word-level tokenizer and a one-layer Llama (kilobytes; trains a step in a second)."""
    return make_tiny_llama(path, WORDS, eos=eos)


def _sft_rows(path: Path, n: int = 8, words: int = 30) -> Path:
    """Ingest-like output: ``sft.jsonl`` with long conversations, marked complete."""
    from feinschliff.artifacts import mark_complete

    path.mkdir(parents=True, exist_ok=True)
    msgs = [
        {"role": "user", "content": " ".join(["Frage"] * words)},
        {"role": "assistant", "content": " ".join(["Antwort"] * words)},
    ]
    (path / "sft.jsonl").write_text(
        "".join(json.dumps({"messages": msgs}) + "\n" for _ in range(n))
    )
    mark_complete(path)
    return path


def _recipe(model: Path, *sets: str):
    from feinschliff.recipe_loader import load_recipe

    return load_recipe(
        DEMO,
        [
            f"base_model.name={model}",
            "train.chat_template=chatml",
            "train.hyperparameters.max_steps=1",
            "train.hyperparameters.batch_size=2",
            "train.hyperparameters.max_length=16",
            "train.lora.r=2",
            *sets,
        ],
    )


def test_padding_free_sft_builds_and_truncates_rows_to_max_length(tmp_path):
    """TRL 1.16 refuses max_length with padding_free (no packing); we truncate ourselves."""
    from datasets import load_dataset
    from transformers import AutoTokenizer

    from feinschliff.train import trl_backend as tb

    model = _tiny_model(tmp_path / "model")
    recipe = _recipe(model, "train.padding_free=true")
    tok = AutoTokenizer.from_pretrained(model)
    tb.set_pad_token(tok, padding_free=True)
    tb.apply_chat_template_choice(tok, "chatml", assistant_only_loss=False)
    rows = _sft_rows(tmp_path / "data") / "sft.jsonl"
    raw = load_dataset("json", data_files={"train": str(rows), "eval": str(rows)})
    trainer = tb.build_trainer(
        recipe,
        tb.load_model(recipe, str(model)),
        tok,
        raw,
        tmp_path / "ckpt",
        tb.lora_config(recipe),
        [],
    )
    assert trainer.data_collator.padding_free
    for dataset in (trainer.train_dataset, trainer.eval_dataset):
        assert len(dataset) == 8
        assert {len(r["input_ids"]) for r in dataset} == {16}
        assert {len(r["labels"]) for r in dataset} == {16}


def test_padding_free_sft_trains(tmp_path, monkeypatch):
    from feinschliff.artifacts import DatasetRef, completed_hash
    from feinschliff.train.stage import run_train

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    data = _sft_rows(tmp_path / "data")
    recipe = _recipe(_tiny_model(tmp_path / "model"), "train.padding_free=true")
    ref = run_train(
        recipe, DatasetRef(path=str(data), sha256=completed_hash(data)), tmp_path / "out"
    )
    metrics = json.loads((Path(ref.path) / "metrics.json").read_text())
    assert metrics["global_step"] == 1 and metrics["train_rows"] == 8


def test_a_configuration_trl_refuses_is_a_clear_cli_error(tmp_path, monkeypatch):
    """No traceback: TRL's ValueError (here: no pad or EOS token) is reported as a failure."""
    from typer.testing import CliRunner

    from feinschliff.cli import app
    from feinschliff.cli.app import Failure

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    model = _tiny_model(tmp_path / "model", eos=None)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(DEMO.read_text())
    res = CliRunner().invoke(
        app,
        [
            "train",
            str(recipe),
            "--data",
            str(_sft_rows(tmp_path / "data")),
            "--out",
            str(tmp_path / "out"),
            *("--set", f"base_model.name={model}", "--set", "train.chat_template=chatml"),
            *("--set", "train.lora.r=2", "--set", "train.hyperparameters.max_steps=1"),
        ],
    )
    assert isinstance(res.exception, Failure), res.exception  # printed by main(), exit 1
    msg = str(res.exception)
    assert "TRL refused train (sft, backend trl)" in msg and "pad_token" in msg


def test_constant_schedule_keeps_its_warmup(tmp_path):
    from feinschliff.train import trl_backend as tb

    model = tmp_path / "m"
    warm = _recipe(
        model,
        "train.hyperparameters.lr_scheduler=constant",
        "train.hyperparameters.warmup_ratio=0.1",
    )
    args = tb._common_args(warm, tmp_path, has_eval=False)
    assert (args["lr_scheduler_type"], args["warmup_steps"]) == ("constant_with_warmup", 0.1)
    flat = _recipe(model, "train.hyperparameters.lr_scheduler=constant")
    assert tb._common_args(flat, tmp_path, has_eval=False)["lr_scheduler_type"] == "constant"
    cosine = _recipe(model, "train.hyperparameters.lr_scheduler=cosine")
    assert tb._common_args(cosine, tmp_path, has_eval=False)["lr_scheduler_type"] == "cosine"


def test_the_chatml_adapter_carries_its_template_and_says_so(tmp_path, monkeypatch):
    """Evaluation and serving must render prompts as training did; with chatml that is not
    the base model's template, so the adapter keeps it (as save_pretrained would)."""
    from feinschliff.artifacts import DatasetRef, completed_hash
    from feinschliff.train.stage import run_train
    from feinschliff.train.templates import CHATML

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    model = _tiny_model(tmp_path / "model")
    data = _sft_rows(tmp_path / "data", words=3)
    recipe = _recipe(model, "train.assistant_only_loss=true")
    ref = run_train(
        recipe, DatasetRef(path=str(data), sha256=completed_hash(data)), tmp_path / "out"
    )
    adapter = Path(ref.path) / "adapter"
    assert (adapter / "chat_template.jinja").read_text() == CHATML  # not the marked training copy
    assert (
        "ChatML, not the base model's own: render prompts with `chat_template.jinja`"
        in (adapter / "README.md").read_text()
    )


def _sft_files(tmp_path: Path, n: int = 8, *, eval_rows: int = 0) -> dict[str, Path]:
    msgs = [
        {"role": "user", "content": "Frage Frage"},
        {"role": "assistant", "content": "Antwort Antwort Antwort"},
    ]
    line = json.dumps({"messages": msgs}) + "\n"
    files = {"train": tmp_path / "rows" / "train.jsonl"}
    files["train"].parent.mkdir(parents=True, exist_ok=True)
    files["train"].write_text(line * n)
    if eval_rows:
        files["eval"] = tmp_path / "rows" / "eval.jsonl"
        files["eval"].write_text(line * eval_rows)
    return files


def test_a_rerun_after_the_final_checkpoint_finishes_without_training_on(tmp_path):
    """A kill after the checkpoint at max_steps was marked complete, before the adapter was
    saved: the rerun resumes from that checkpoint. Training on from it would take one more
    batch (3 steps of a 4-step epoch; constant LR: a different adapter); it must only finish."""
    import shutil

    from safetensors.torch import load_file

    from feinschliff.train.trl_backend import train_trl

    model = _tiny_model(tmp_path / "model")
    recipe = _recipe(
        model,
        "train.hyperparameters.max_steps=3",
        "train.hyperparameters.save_steps=1",
        "train.hyperparameters.lr_scheduler=constant",
        "train.hyperparameters.learning_rate=0.01",
        "train.hyperparameters.eval_fraction=0.2",
    )
    files = _sft_files(tmp_path, eval_rows=2)
    out = tmp_path / "out"
    whole = train_trl(recipe, str(model), files, out)
    assert whole["global_step"] == 3 and whole["resumed_from"] is None
    shutil.copytree(out / "adapter", tmp_path / "whole-adapter")
    shutil.rmtree(out / "adapter")  # killed in the window: checkpoint-3 complete, no adapter

    rerun = train_trl(recipe, str(model), files, out)
    assert rerun["resumed_from"] == "checkpoint-3"
    assert rerun["global_step"] == 3
    assert rerun["loss_curve"] == whole["loss_curve"]
    assert rerun["eval_curve"] == whole["eval_curve"]
    assert rerun["eval_loss"] == pytest.approx(whole["eval_loss"])
    assert rerun["trained_tokens"] == whole["trained_tokens"]
    before = load_file(str(tmp_path / "whole-adapter" / "adapter_model.safetensors"))
    after = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    assert all(torch_equal(before[k], after[k]) for k in before)
    assert not (out / "checkpoints" / "checkpoint-4").exists()


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def _pref_files(tmp_path: Path, n: int = 4) -> dict[str, Path]:
    row = {
        "prompt": [{"role": "user", "content": "Frage Frage"}],
        "chosen": [{"role": "assistant", "content": "Antwort"}],
        "rejected": [{"role": "assistant", "content": "Frage Antwort Antwort"}],
    }
    path = tmp_path / "pref" / "train.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((json.dumps(row) + "\n") * n)
    return {"train": path}


def test_orpo_counts_its_trained_tokens_as_dpo_does(tmp_path):
    """ORPO batches hold chosen_/rejected_input_ids, no input_ids: transformers counted
    nothing, and metrics.json (and the registry's lineage) said 0 tokens."""
    from feinschliff.train.trl_backend import train_trl

    model = _tiny_model(tmp_path / "model")
    files = _pref_files(tmp_path)
    counts = {}
    for method in ("orpo", "dpo"):
        recipe = _recipe(model, f"train.method={method}", "train.hyperparameters.max_length=32")
        metrics = train_trl(recipe, str(model), files, tmp_path / method)
        assert metrics["global_step"] == 1 and metrics["tokens_per_second"] is not None
        counts[method] = metrics["trained_tokens"]
    assert counts["orpo"] == counts["dpo"] > 0


def _init_adapter(model: Path, path: Path) -> Path:
    """A fresh PEFT LoRA on the tiny model, as a production adapter to continue."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lora = LoraConfig(r=2, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
    get_peft_model(AutoModelForCausalLM.from_pretrained(model), lora).save_pretrained(path)
    return path


def test_a_warm_started_dpo_adapter_leaves_trls_reference_copy_behind(tmp_path):
    """TRL trains a warm-started DPO/KTO against a frozen "ref" copy of the production
    adapter; the registry must get the trained adapter only, not adapter/ref/ too."""
    from feinschliff.train.trl_backend import train_trl

    model = _tiny_model(tmp_path / "model")
    recipe = _recipe(model, "train.method=dpo", "train.hyperparameters.max_length=32")
    init = _init_adapter(model, tmp_path / "production")
    train_trl(recipe, str(model), _pref_files(tmp_path), tmp_path / "out", init_adapter=init)
    adapter = tmp_path / "out" / "adapter"
    assert (adapter / "adapter_model.safetensors").exists()
    assert [p.name for p in adapter.iterdir() if p.is_dir()] == []  # no ref/


def test_eval_steps_evaluate_the_final_step_once(tmp_path):
    """transformers evaluates the last step itself when eval_steps is set: the stage's final
    evaluation would run a second time and add a duplicate to the eval curve."""
    from feinschliff.train.trl_backend import train_trl

    model = _tiny_model(tmp_path / "model")
    recipe = _recipe(
        model,
        "train.hyperparameters.max_steps=2",
        "train.hyperparameters.eval_fraction=0.2",
        "train.hyperparameters.eval_steps=1",
    )
    metrics = train_trl(recipe, str(model), _sft_files(tmp_path, eval_rows=2), tmp_path / "out")
    assert [e["step"] for e in metrics["eval_curve"]] == [1, 2]
    assert metrics["eval_loss"] == metrics["eval_curve"][-1]["loss"]
