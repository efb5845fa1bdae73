"""Axolotl YAML generation from a recipe, row conversion, checkpoint markers (no Axolotl venv)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feinschliff.recipe_loader import RecipeError, load_recipe
from feinschliff.train import axolotl_backend
from feinschliff.train import axolotl_config as ax

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo-de.yaml"


def _cfg(tmp_path: Path, *sets: str, on_cpu: bool = True, **kw) -> dict:
    recipe = load_recipe(DEMO, ["train.backend=axolotl", *sets])
    files = {"train": tmp_path / "train.jsonl"}
    return ax.build_config(recipe, "/models/smol", files, tmp_path / "out", on_cpu=on_cpu, **kw)


def test_sft_config_maps_the_recipe_and_adds_the_cpu_overrides(tmp_path):
    cfg = _cfg(tmp_path, "train.hyperparameters.max_steps=3", "train.assistant_only_loss=true")
    assert cfg["base_model"] == "/models/smol" and cfg["adapter"] == "lora"
    assert (cfg["lora_r"], cfg["lora_alpha"], cfg["lora_target_linear"]) == (16, 32, True)
    assert (cfg["sequence_len"], cfg["micro_batch_size"], cfg["max_steps"]) == (256, 4, 3)
    assert cfg["datasets"][0]["type"] == "chat_template"
    assert cfg["datasets"][0]["roles_to_train"] == ["assistant"]
    assert all(cfg[k] is False for k in ax.CPU_OVERRIDES)
    assert "rl" not in cfg and "lora_model_dir" not in cfg
    gpu = _cfg(tmp_path, "base_model.dtype=bfloat16", on_cpu=False)
    assert gpu["bf16"] is True and "lora_mlp_kernel" not in gpu


def test_every_generated_key_is_one_we_know_axolotl_reads(tmp_path):
    for sets in (
        ["train.method=dpo", "train.lora.target_modules=[q_proj, v_proj]"],
        [
            "train.method=orpo",
            "train.qlora=true",
            "train.hyperparameters.eval_fraction=0.2",
            "train.hyperparameters.eval_steps=1",
        ],
        ["train.packing=true", "train.hyperparameters.gradient_checkpointing=true"],
    ):
        files = {"train": tmp_path / "t.jsonl", "eval": tmp_path / "e.jsonl"}
        recipe = load_recipe(DEMO, ["train.backend=axolotl", *sets])
        cfg = ax.build_config(recipe, "m", files, tmp_path, on_cpu=True, resume=tmp_path / "c")
        assert set(cfg) <= ax.TOP_KEYS
        assert all(set(d) <= ax.DATASET_KEYS for d in cfg["datasets"] + cfg["test_datasets"])


def test_unknown_keys_are_refused_not_dropped():
    with pytest.raises(ax.AxolotlError, match=r"lora_use_dora"):
        ax.check_keys({"base_model": "m", "lora_use_dora": True})
    with pytest.raises(ax.AxolotlError, match=r"datasets\[\]\.field_prompt"):
        ax.check_keys({"datasets": [{"path": "x", "field_prompt": "p"}]})


def test_preference_methods_map_to_their_axolotl_strategies(tmp_path):
    dpo = _cfg(tmp_path, "train.method=dpo", "train.beta=0.2")
    assert (dpo["rl"], dpo["rl_beta"]) == ("dpo", 0.2)
    assert dpo["datasets"][0]["type"] == "chat_template.default"
    assert dpo["datasets"][0]["field_messages"] == "prompt"
    orpo = _cfg(tmp_path, "train.method=orpo", "train.beta=0.3")
    assert (orpo["rl"], orpo["orpo_alpha"], orpo["remove_unused_columns"]) == ("orpo", 0.3, False)
    assert orpo["datasets"][0]["type"] == "chat_template.argilla"
    lora = _cfg(tmp_path, "train.lora.target_modules=[q_proj, v_proj]")
    assert lora["lora_target_modules"] == ["q_proj", "v_proj"] and "lora_target_linear" not in lora
    warm = _cfg(tmp_path, init_adapter=tmp_path / "prod" / "adapter")
    assert warm["lora_model_dir"] == str(tmp_path / "prod" / "adapter")


def test_orpo_rows_become_argilla_conversations(tmp_path):
    row = {
        "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
        "chosen": [{"role": "assistant", "content": "gut"}],
        "rejected": [{"role": "assistant", "content": "schlecht"}],
    }
    src = tmp_path / "src.jsonl"
    src.write_text(json.dumps(row) + "\n")
    recipe = load_recipe(DEMO, ["train.backend=axolotl", "train.method=orpo"])
    out = json.loads(ax.axolotl_rows(recipe, src, tmp_path / "dst.jsonl").read_text())
    assert out["system"] == "S"
    assert [m["content"] for m in out["chosen"]] == ["Q", "gut"]
    assert [m["content"] for m in out["rejected"]] == ["Q", "schlecht"]
    multi = {
        **row,
        "prompt": [
            *row["prompt"],
            {"role": "assistant", "content": "A"},
            {"role": "user", "content": "Q2"},
        ],
        "provenance": {"source": "langfuse", "source_id": "obs-7"},
    }
    src.write_text(json.dumps(row) + "\n" + json.dumps(multi) + "\n")
    with pytest.raises(ax.AxolotlError, match="single-turn") as refused:
        ax.axolotl_rows(recipe, src, tmp_path / "dst.jsonl")
    # which rows, and where to go: the message used to say neither
    assert "1 of 2 rows of src.jsonl" in str(refused.value)
    assert "row 2, source langfuse, source_id obs-7" in str(refused.value)
    assert "train.backend: trl" in str(refused.value)


def test_checkpoints_are_marked_once_superseded(tmp_path):
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    axolotl_backend.mark_finished_checkpoints(tmp_path, all_done=False)
    assert (tmp_path / "checkpoint-2" / ".complete").exists()
    assert not (tmp_path / "checkpoint-4" / ".complete").exists()  # may still be written
    assert axolotl_backend.last_complete_checkpoint(tmp_path).name == "checkpoint-2"
    axolotl_backend.mark_finished_checkpoints(tmp_path, all_done=True)
    assert axolotl_backend.last_complete_checkpoint(tmp_path).name == "checkpoint-4"


def test_kto_is_refused_for_axolotl_at_validation(tmp_path):
    with pytest.raises(RecipeError, match="kto is trained by backend trl only"):
        load_recipe(DEMO, ["train.method=kto", "train.backend=axolotl"])


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="PR_SET_PDEATHSIG is Linux-only")
def test_the_axolotl_child_is_killed_when_the_stage_process_dies(tmp_path):
    """A stage killed with SIGKILL must not leave Axolotl training on as an orphan (its rerun
    would resume into the same checkpoint folder while the orphan still writes there)."""
    import os
    import subprocess
    import time

    read, write = os.pipe()
    if (pid := os.fork()) == 0:  # the "stage": starts the child, then vanishes like after kill -9
        try:
            child = subprocess.Popen(
                ["sleep", "60"], preexec_fn=axolotl_backend._die_with(os.getpid())
            )
            os.write(write, str(child.pid).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = int(os.read(read, 32))
    os.waitpid(pid, 0)

    def alive() -> bool:  # a zombie is dead, only waiting for its new parent to reap it
        try:
            return Path(f"/proc/{child}/stat").read_text().split(") ")[-1][:1] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 5
    while alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(), "the Axolotl child outlived its parent"


def test_axolotl_evaluates_at_the_end_without_eval_steps(tmp_path):
    """Axolotl turns eval_strategy "no" plus a test set into one eval at step 0 (untrained);
    a "steps" period no run reaches leaves transformers' end-of-training eval."""
    from transformers import TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_callback import DefaultFlowCallback

    recipe = load_recipe(DEMO, ["train.backend=axolotl", "train.hyperparameters.eval_fraction=0.2"])
    files = {"train": tmp_path / "t.jsonl", "eval": tmp_path / "e.jsonl"}
    cfg = ax.build_config(recipe, "m", files, tmp_path, on_cpu=True)
    assert (cfg["eval_strategy"], cfg["eval_steps"]) == ("steps", ax.EVAL_AT_END_ONLY)
    every = load_recipe(
        DEMO,
        [
            "train.backend=axolotl",
            "train.hyperparameters.eval_fraction=0.2",
            "train.hyperparameters.eval_steps=5",
        ],
    )
    assert ax.build_config(every, "m", files, tmp_path, on_cpu=True)["eval_steps"] == 5

    # what Axolotl 0.19 hands transformers for this config (_configure_save_and_eval_strategy)
    args = TrainingArguments(
        output_dir=str(tmp_path), eval_strategy="steps", eval_steps=cfg["eval_steps"], use_cpu=True
    )
    flow = DefaultFlowCallback()
    evaluated = []
    for step in (1, 2, 3):
        state = TrainerState(global_step=step, max_steps=3, eval_steps=cfg["eval_steps"])
        evaluated.append(flow.on_step_end(args, state, TrainerControl()).should_evaluate)
    assert evaluated == [False, False, True]


def test_metrics_take_the_eval_loss_of_the_final_step_only():
    start = {"step": 0, "eval_loss": 3.0}  # Axolotl's eval_on_start: the untrained adapter
    losses = [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.0}]
    assert axolotl_backend.final_eval_loss([start, *losses], global_step=2) is None
    final = {"step": 2, "eval_loss": 1.9}
    assert axolotl_backend.final_eval_loss([start, *losses, final], global_step=2) == 1.9
    assert axolotl_backend.final_eval_loss(losses, global_step=2) is None


def test_the_axolotl_adapter_keeps_the_chat_template_it_was_trained_with(tmp_path):
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    (ckpt / "adapter_config.json").write_text(json.dumps({"r": 8, "bias": "none"}))
    (ckpt / "adapter_model.safetensors").write_bytes(b"weights")
    (ckpt / "chat_template.jinja").write_text("{{ messages }}")  # Axolotl's saved tokenizer
    adapter = axolotl_backend.collect_adapter(ckpt, tmp_path / "adapter")
    assert (adapter / "chat_template.jinja").read_text() == "{{ messages }}"


# --------------------------------------------------------------------------- train_axolotl (no venv)


def _checkpoint(ckpt_dir: Path, step: int, *, max_steps: int, tokens: int) -> Path:
    """What Axolotl leaves in a checkpoint: adapter, trainer state, its token counters."""
    import numpy as np
    from safetensors.numpy import save_file

    path = ckpt_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": 2, "bias": "none"}))
    save_file({"w": np.full((2, 3), step, np.float32)}, str(path / "adapter_model.safetensors"))
    history = [
        {"step": s, "loss": 1.0 / s, "tokens/total": tokens * s // step} for s in range(1, step + 1)
    ]
    state = {"global_step": step, "max_steps": max_steps, "log_history": history}
    (path / "trainer_state.json").write_text(json.dumps(state))
    (path / "tokens_state.json").write_text(json.dumps({"total": tokens, "trainable": tokens // 2}))
    return path


def _fake_axolotl(monkeypatch, tmp_path: Path, stream):
    from types import SimpleNamespace

    monkeypatch.setattr(axolotl_backend, "axolotl_venv", lambda: tmp_path / "venv")
    monkeypatch.setattr(axolotl_backend, "validate_in_venv", lambda venv, cfg, work: None)
    monkeypatch.setattr(axolotl_backend, "_stream", stream)
    clock = iter([100.0, 110.0])  # every run takes 10 s
    monkeypatch.setattr(axolotl_backend, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    recipe = load_recipe(DEMO, ["train.backend=axolotl", "train.hyperparameters.max_steps=4"])
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"messages": []}) + "\n")
    return recipe, {"train": rows}


def test_a_rerun_after_the_final_axolotl_checkpoint_does_not_train_on(tmp_path, monkeypatch):
    """Killed after Axolotl finished (its checkpoints marked) but before the stage did: the
    rerun resumes from checkpoint-<max_steps>; Axolotl would train one more batch from there."""
    out = tmp_path / "out"
    final = _checkpoint(out / "checkpoints", 4, max_steps=4, tokens=400)
    (final / ".complete").write_text("4")
    ran = []
    recipe, files = _fake_axolotl(monkeypatch, tmp_path, lambda *a: ran.append(a))
    metrics = axolotl_backend.train_axolotl(recipe, "/models/smol", files, out)
    assert ran == []
    assert (metrics["global_step"], metrics["resumed_from"]) == (4, "checkpoint-4")
    assert metrics["trained_tokens"] == 400 and metrics["tokens_per_second"] is None
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == (
        final / "adapter_model.safetensors"
    ).read_bytes()


def test_axolotl_tokens_per_second_counts_only_this_runs_tokens(tmp_path, monkeypatch):
    """Axolotl restores its token counter on resume: 400 of the 1000 were counted before."""
    out = tmp_path / "out"
    ckpt_dir = out / "checkpoints"
    (_checkpoint(ckpt_dir, 2, max_steps=4, tokens=400) / ".complete").write_text("2")

    def stream(cmd, log_path, ckpt):
        _checkpoint(ckpt, 4, max_steps=4, tokens=1000)
        return {"losses": [0.5, 0.25]}

    recipe, files = _fake_axolotl(monkeypatch, tmp_path, stream)
    metrics = axolotl_backend.train_axolotl(recipe, "/models/smol", files, out)
    assert (metrics["global_step"], metrics["resumed_from"]) == (4, "checkpoint-2")
    assert metrics["trained_tokens"] == 1000
    assert metrics["tokens_per_second"] == 60.0  # (1000 - 400) / 10 s, not 1000 / 10 s


def test_a_constant_schedule_keeps_its_warmup_on_axolotl(tmp_path):
    """Axolotl hands lr_scheduler to transformers, whose "constant" ignores the warm-up: the
    same recipe must warm up as on the TRL backend."""
    warm = _cfg(
        tmp_path,
        "train.hyperparameters.lr_scheduler=constant",
        "train.hyperparameters.warmup_ratio=0.1",
    )
    assert (warm["lr_scheduler"], warm["warmup_ratio"]) == ("constant_with_warmup", 0.1)
    assert _cfg(tmp_path, "train.hyperparameters.lr_scheduler=constant")["lr_scheduler"] == (
        "constant"
    )
    assert _cfg(tmp_path, "train.hyperparameters.lr_scheduler=cosine")["lr_scheduler"] == "cosine"


def test_the_axolotl_child_inherits_the_callers_hub_settings(monkeypatch):
    """A hub-id base model must be downloadable by Axolotl (it was always run offline, so a
    model not already in the HF cache failed); an offline caller (tests, air-gapped) stays so."""
    from feinschliff.train.axolotl_backend import _env

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    env = _env()
    assert "HF_HUB_OFFLINE" not in env and "HF_DATASETS_OFFLINE" not in env
    assert env["HF_TOKEN"] == "hf_x" and env["DO_NOT_TRACK"] == "1"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _env()["HF_HUB_OFFLINE"] == "1"


def test_axolotl_qlora_looks_for_bitsandbytes_in_the_axolotl_venv(tmp_path, monkeypatch):
    """Axolotl trains in its own venv: bitsandbytes there is what QLoRA needs (the check
    looked in feinschliff's venv, refusing a working setup and passing a broken one)."""
    import torch

    from feinschliff.train import trl_backend as tb

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tb.importlib.util, "find_spec", lambda name: object())  # ours has it
    venv = tmp_path / "axolotl-venv"
    with pytest.raises(tb.QLoRAUnavailable, match="in the Axolotl venv"):
        tb.check_qlora_available(venv)
    (venv / "lib" / "python3.11" / "site-packages" / "bitsandbytes").mkdir(parents=True)
    monkeypatch.setattr(tb.importlib.util, "find_spec", lambda name: None)  # ours lacks it
    tb.check_qlora_available(venv)  # no error: Axolotl's venv has it
    with pytest.raises(tb.QLoRAUnavailable, match="pip install bitsandbytes"):
        tb.check_qlora_available()  # the TRL backend trains here
