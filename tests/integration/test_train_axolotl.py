"""Axolotl SFT / DPO / ORPO from the same demo recipe (`train.backend: axolotl`), a few steps each;
kill -9 and resume, and warm start from the production adapter, with the Axolotl backend.

Needs the Axolotl venv: the session fixture builds it with scripts/install_axolotl.sh on first
use (~5-8 min, ~4.3 GB, cached in $FEINSCHLIFF_HOME/venvs keyed by its pins).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train_trl import DEMO, assert_adapter_trained, train_cli

from feinschliff.artifacts import completed_hash

pytestmark = pytest.mark.integration
# Kill after checkpoint-1 is complete (it is, once checkpoint-2 exists), finish at step 4.
AX_RESUME = {
    "train.hyperparameters.max_steps": 4,
    "train.hyperparameters.save_steps": 1,
    "train.hyperparameters.max_length": 128,
    "train.hyperparameters.batch_size": 2,
}


def train_cmd(data: Path, out: Path, sets: dict) -> list[str]:
    cmd = [sys.executable, "-m", "feinschliff.cli", "train", DEMO, "--data", str(data)]
    cmd += ["--out", str(out)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


@pytest.fixture(scope="session")
def axolotl_venv():
    from feinschliff.train.axolotl_backend import axolotl_venv

    return axolotl_venv(install=True)


@pytest.mark.parametrize("method", ["sft", "dpo", "orpo"])
def test_axolotl_trains_from_the_same_recipe(
    method, axolotl_venv, demo_model, demo_ingest, tmp_path
):
    out = tmp_path / method
    p = train_cli(demo_ingest.dir, out, **{"train.backend": "axolotl", "train.method": method})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "axolotl: step 2 loss" in p.stderr  # progress streamed from the subprocess
    metrics = assert_adapter_trained(out, demo_model)
    assert metrics["backend"] == "axolotl" and metrics["method"] == method
    cfg_text = (out / "axolotl" / "config.yaml").read_text()
    assert "lora_qkv_kernel: false" in cfg_text and "bf16: false" in cfg_text  # CPU overrides
    assert sorted(p.name for p in (out / "adapter").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "chat_template.jinja",  # the template it was trained with travels with it
    ]
    assert not (out / "checkpoints" / "model.safetensors").exists()
    if method == "sft":
        assert metrics["trained_tokens"] > 0
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 16


def test_the_installed_axolotl_schema_confirms_our_keys_and_catches_others(
    axolotl_venv, demo_model, tmp_path
):
    from feinschliff.recipe_loader import load_recipe
    from feinschliff.train.axolotl_backend import AxolotlError, validate_in_venv
    from feinschliff.train.axolotl_config import build_config

    recipe = load_recipe(DEMO, ["train.backend=axolotl", "train.method=dpo"])
    files = {"train": tmp_path / "t.jsonl", "eval": tmp_path / "e.jsonl"}
    cfg = build_config(recipe, demo_model, files, tmp_path, on_cpu=True)
    validate_in_venv(axolotl_venv, cfg, tmp_path)  # every generated key is a schema field
    cfg["lora_use_dora"] = True  # a plausible typo of peft_use_dora: Axolotl would drop it
    cfg["datasets"][0]["message_property_mappings"] = {"role": "role"}  # not a DPO field
    with pytest.raises(AxolotlError) as err:
        validate_in_venv(axolotl_venv, cfg, tmp_path)
    assert "lora_use_dora" in str(err.value)
    assert "datasets[].message_property_mappings" in str(err.value)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:  # a zombie still has /proc/PID; its state is Z
        return " Z " not in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False


def test_axolotl_sft_killed_with_sigkill_resumes_from_the_last_complete_checkpoint(
    axolotl_venv, demo_model, demo_ingest, tmp_path
):
    """kill -9 of `feinschliff train` (its Axolotl child dies with it), then the same command:
    Axolotl continues from the newest checkpoint with a completeness marker and ends at
    max_steps; the adapter loads in PEFT."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "train"
    sets = {**AX_RESUME, "train.backend": "axolotl"}
    cmd = train_cmd(demo_ingest.dir, out, sets)
    with (tmp_path / "first.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    marker = out / "checkpoints" / "checkpoint-1" / ".complete"
    deadline = time.monotonic() + 600
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), (tmp_path / "first.log").read_text()[-3000:]
    axolotl = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and axolotl
    deadline = time.monotonic() + 30  # PR_SET_PDEATHSIG: the orphan must not train on
    while any(_alive(c) for c in axolotl) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(c) for c in axolotl), "Axolotl kept training after its parent died"
    assert not completed_hash(out) and not (out / "adapter").exists()
    killed_at = max(
        int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-[0-9]*")
    )
    assert killed_at < 4, "the first run got to the end before the kill"

    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    resumed = metrics["resumed_from"]
    assert resumed is not None and f"resuming from {out / 'checkpoints' / resumed}" in p.stderr
    assert int(resumed.split("-")[1]) <= killed_at
    cfg = (out / "axolotl" / "config.yaml").read_text()
    assert f"resume_from_checkpoint: {out / 'checkpoints' / resumed}" in cfg
    state = json.loads((out / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == metrics["global_step"] == 4
    assert [e["step"] for e in metrics["loss_curve"]] == [1, 2, 3, 4]
    # Only the steps after the checkpoint ran again: the rerun logged those losses alone.
    rerun_losses = p.stderr.count("axolotl: step ")
    assert rerun_losses == 4 - int(resumed.split("-")[1])
    assert completed_hash(out)
    base = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, str(out / "adapter"))
    assert tuned.peft_config["default"].r == 16


def test_axolotl_warm_start_continues_the_production_adapter(
    axolotl_venv, demo_model, demo_adapter, demo_ingest, home, tmp_path
):
    """`train.init_from: production` with the Axolotl backend: the run loads the adapter the
    registry aliases production (lora_model_dir) and trains it on. After one Adam step every
    weight is within one learning rate of production's: a fresh LoRA (random A, zero B) would
    differ by the size of A's init, ~100 x more."""
    from safetensors.torch import load_file

    from feinschliff.pipeline import dataset_lineage, registry_root
    from feinschliff.recipe_loader import load_recipe
    from feinschliff.registry import promote, register_adapter
    from feinschliff.serving.preflight import base_target
    from feinschliff.train import run_train

    sets = ["train.backend=axolotl", "train.init_from=production"]
    sets += ["train.hyperparameters.max_steps=1", "train.hyperparameters.save_steps=1"]
    sets += ["train.hyperparameters.max_length=128", "train.hyperparameters.batch_size=2"]
    recipe = load_recipe(DEMO, sets)
    root = registry_root(recipe)
    version = register_adapter(
        root,
        recipe.use_case,
        demo_adapter,
        {"dataset": dataset_lineage(demo_ingest)},
        target=base_target(recipe),
    )
    promote(root, recipe.use_case, version, why="test: production adapter to continue")
    prod_dir = root / recipe.use_case / version / "adapter"

    warm = run_train(recipe, demo_ingest, tmp_path / "warm")
    metrics = json.loads((warm.dir / "metrics.json").read_text())
    assert metrics["backend"] == "axolotl" and metrics["global_step"] == 1
    assert metrics["init_from"] == f"{recipe.use_case}/{version}"
    cfg = (warm.dir / "axolotl" / "config.yaml").read_text()
    assert f"lora_model_dir: {prod_dir}" in cfg

    before = load_file(str(prod_dir / "adapter_model.safetensors"))
    after = load_file(str(warm.dir / "adapter" / "adapter_model.safetensors"))
    assert before.keys() == after.keys() and len(before) == 2 * 30 * 7
    lr = recipe.train.hyperparameters.learning_rate
    step = max((after[k] - before[k]).abs().max().item() for k in before)
    assert 0 < step <= 1.05 * lr  # one Adam step moves each weight by at most ~lr
    init_scale = max(before[k].abs().max().item() for k in before if "lora_A" in k)
    assert init_scale > 50 * lr
    assert any(before[k].abs().sum() > 0 for k in before if "lora_B" in k)
