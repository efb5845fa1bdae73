"""The train stage: its cache key knows the base model's content, and it refuses before writing
anything what cannot train as written (an output inside its data, a base model folder that is
not there, LoRA targets or a chat template the model lacks)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from feinschliff.artifacts import DatasetRef, OutputInUse, completed_hash, mark_complete
from feinschliff.recipe_loader import load_recipe
from tests.cli_helpers import run_cli
from tests.unit.tiny_llama import make_tiny_llama

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo-de.yaml"
WORDS = ["[UNK]", "<|im_start|>", "<|im_end|>", "user", "assistant", "Frage", "Antwort"]
FAST = [
    "train.chat_template=chatml",
    "train.hyperparameters.max_steps=1",
    "train.hyperparameters.batch_size=2",
    "train.hyperparameters.max_length=16",
    "train.lora.r=2",
]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))


def _data(path: Path, n: int = 4) -> Path:
    path.mkdir(parents=True)
    msgs = [
        {"role": "user", "content": "Frage Frage"},
        {"role": "assistant", "content": "Antwort Antwort"},
    ]
    (path / "sft.jsonl").write_text(
        "".join(json.dumps({"messages": msgs}) + "\n" for _ in range(n))
    )
    mark_complete(path, stage="ingest")
    return path


def _ref(data: Path) -> DatasetRef:
    return DatasetRef(path=str(data), sha256=completed_hash(data))


def _recipe(model: Path | str, *sets: str):
    return load_recipe(DEMO, [f"base_model.name={model}", *FAST, *sets])


def _train_cli(tmp_path: Path, data: Path, out: Path, *sets: str) -> tuple[int, str]:
    args = [f"--set={s}" for s in (f"base_model.name={tmp_path / 'model'}", *FAST, *sets)]
    return run_cli("train", str(DEMO), "--data", str(data), "--out", str(out), *args)


# --------------------------------------------------------------------------- cache key


def test_a_base_model_folder_replaced_by_another_model_is_trained_on_again(tmp_path, caplog):
    """The key hashed the name alone: a folder holding other weights (here other shapes) at the
    same path reused the adapter trained on the old model."""
    from feinschliff.train.stage import cache_key, run_train

    model = make_tiny_llama(tmp_path / "model", WORDS)
    data = _ref(_data(tmp_path / "data"))
    run_train(_recipe(model), data, tmp_path / "out")
    first = cache_key(_recipe(model), data)
    caplog.set_level(logging.INFO, logger="feinschliff.train")
    run_train(_recipe(model), data, tmp_path / "out")
    assert "reusing finished adapter" in caplog.text  # unchanged: reused

    make_tiny_llama(tmp_path / "model", [*WORDS, "Gut", "Schlecht"])  # another vocabulary
    assert cache_key(_recipe(model), data) != first
    caplog.clear()
    run_train(_recipe(model), data, tmp_path / "out")
    assert "reusing finished adapter" not in caplog.text
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["global_step"] == 1


def test_the_fingerprint_reads_files_not_weights_and_leaves_hub_ids_to_their_revision(tmp_path):
    from feinschliff.models import PACKAGED_MODELS
    from feinschliff.train.checks import base_model_fingerprint
    from feinschliff.train.stage import cache_key

    model = make_tiny_llama(tmp_path / "model", WORDS)
    before = base_model_fingerprint(_recipe(model))
    (model / "README.md").write_text("a note")  # not a weight or tokenizer file
    assert base_model_fingerprint(_recipe(model)) == before
    names = [f[0] for f in before["files"]]
    assert "model.safetensors" in names and "tokenizer.json" in names

    data = _ref(_data(tmp_path / "data"))
    hub = load_recipe(DEMO, ["base_model.name=org/model"])
    assert base_model_fingerprint(hub) is None  # no hub access: the revision says it
    pinned = load_recipe(DEMO, ["base_model.name=org/model", "base_model.revision=abc"])
    assert cache_key(hub, data) != cache_key(pinned, data)
    alias = load_recipe(DEMO)  # smollm2-135m-instruct: the pinned wheel its folder comes from
    assert PACKAGED_MODELS[alias.base_model.name].wheel_sha256 in base_model_fingerprint(alias)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("inside", ["data/adapter", "data", "."])
def test_an_output_inside_the_data_or_holding_it_is_refused(tmp_path, inside):
    data = _data(tmp_path / "data")
    make_tiny_llama(tmp_path / "model", WORDS)
    digest = completed_hash(data)
    # OutputInUse: main() prints it and exits 2
    with pytest.raises(OutputInUse, match=r"overlaps the data folder .* \(nothing was written\)"):
        _train_cli(tmp_path, data, tmp_path / inside)
    assert completed_hash(data) == digest  # the ingest output is still complete
    assert sorted(p.name for p in data.iterdir()) == [".complete", "sft.jsonl"]


def test_a_base_model_folder_that_is_not_there_is_refused_before_writing(tmp_path):
    """`validate` passes (the GPU pool that trains may hold the folder); the stage refuses it
    where it trains, before any output: it used to fail after ingest with exit 1."""
    data = _data(tmp_path / "data")
    code, _ = run_cli("validate", str(DEMO), "--set", f"base_model.name={tmp_path / 'nope'}")
    assert code == 0
    code, out = _train_cli(tmp_path, data, tmp_path / "out", f"base_model.name={tmp_path}/nope")
    assert code == 2 and f"base_model.name: {tmp_path}/nope does not exist" in out
    assert not (tmp_path / "out").exists()
    # `run` trains on this machine: refused before Prefect starts and the ingest runs
    work = tmp_path / "work"
    code, out = run_cli(
        "run", str(DEMO), "--workdir", str(work), "--set", f"base_model.name={tmp_path}/nope"
    )
    assert code == 2 and f"base_model.name: {tmp_path}/nope does not exist" in out
    assert not work.exists()


def test_an_evaluation_knows_the_base_models_content(tmp_path):
    """Evaluate's key hashed the base model's name only: a report of the base model (and of an
    adapter on it) was reused after the folder was replaced by another model."""
    from feinschliff.artifacts import AdapterRef
    from feinschliff.evaluate.stage import cache_key

    model = make_tiny_llama(tmp_path / "model", WORDS)
    adapter = AdapterRef(path=str(tmp_path / "adapter"), sha256="0" * 64)
    first = cache_key(_recipe(model), adapter)
    assert cache_key(_recipe(model), adapter) == first
    make_tiny_llama(tmp_path / "model", [*WORDS, "Gut", "Schlecht"])
    assert cache_key(_recipe(model), adapter) != first


def test_lora_targets_the_model_lacks_are_refused_before_writing(tmp_path):
    """PEFT skipped a name matching no module: [q_proj, v_projj] trained q_proj alone."""
    data = _data(tmp_path / "data")
    make_tiny_llama(tmp_path / "model", WORDS)
    code, out = _train_cli(
        tmp_path, data, tmp_path / "out", "train.lora.target_modules=[q_proj, v_projj, mlp]"
    )
    assert code == 2 and not (tmp_path / "out").exists()
    assert "train.lora.target_modules: 'v_projj' (did you mean 'v_proj'?), 'mlp':" in out
    assert "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in out


def test_lora_targets_match_as_peft_matches_them(tmp_path):
    from feinschliff.train.checks import check_model_fits_recipe

    model = make_tiny_llama(tmp_path / "model", WORDS)
    for targets in ("[q_proj, v_proj]", "[self_attn.q_proj, mlp.down_proj]"):
        recipe = _recipe(model, f"train.lora.target_modules={targets}")
        check_model_fits_recipe(recipe, str(model))  # no error
    # a name matches a module or a dotted tail of one, never a part of a name
    from feinschliff.train.stage import TrainError

    for partial in ("proj", "_proj", "attn.q_proj"):
        recipe = _recipe(model, f"train.lora.target_modules=[q_proj, {partial}]")
        with pytest.raises(TrainError, match=f"'{partial}'"):
            check_model_fits_recipe(recipe, str(model))


def test_a_model_without_a_chat_template_needs_chat_template_chatml(tmp_path):
    data = _data(tmp_path / "data")
    make_tiny_llama(tmp_path / "model", WORDS)  # no chat template
    code, out = _train_cli(tmp_path, data, tmp_path / "out", "train.chat_template=model")
    assert code == 2 and "set train.chat_template: chatml" in out
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- backends, estimate


def test_the_axolotl_config_carries_the_base_model_revision(tmp_path):
    from feinschliff.train import axolotl_config as ax

    files = {"train": tmp_path / "t.jsonl"}
    pinned = load_recipe(DEMO, ["train.backend=axolotl", "base_model.revision=0123abc"])
    cfg = ax.build_config(pinned, "org/model", files, tmp_path, on_cpu=True)
    assert cfg["revision_of_model"] == "0123abc"  # Axolotl 0.19's key (alias model_revision)
    plain = load_recipe(DEMO, ["train.backend=axolotl"])
    assert "revision_of_model" not in ax.build_config(plain, "m", files, tmp_path, on_cpu=True)


def test_estimate_counts_tokens_with_the_template_training_uses(tmp_path):
    from transformers import AutoTokenizer

    from feinschliff import estimate as est
    from feinschliff.train.templates import CHATML

    model = make_tiny_llama(tmp_path / "model", WORDS)  # no template of its own
    data = _data(tmp_path / "data", n=2)
    per_row, how = est.row_tokens(_recipe(model, "train.hyperparameters.max_length=64"), data)
    row = json.loads((data / "sft.jsonl").read_text().splitlines()[0])["messages"]
    tok = AutoTokenizer.from_pretrained(model)
    want = len(tok.apply_chat_template(row, tokenize=True, chat_template=CHATML)["input_ids"])
    assert (per_row, how) == ([want, want], "tokenizer")
    with pytest.raises(est.EstimateError, match="set train.chat_template: chatml"):
        est.row_tokens(_recipe(model, "train.chat_template=model"), data)
