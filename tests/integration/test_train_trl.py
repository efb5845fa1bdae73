"""TRL SFT / DPO / ORPO / KTO train a few real steps on the demo model through `feinschliff train`.

Each run is a CLI subprocess, so metrics.json's peak RSS is that training's own. Every adapter
must load in PEFT with all its LoRA B matrices moved away from PEFT's zero init, and change the
model's output. One shared ingest output (session fixture ``demo_ingest``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from feinschliff.artifacts import completed_hash

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")
QUICK = {
    "train.hyperparameters.max_steps": 2,
    "train.hyperparameters.save_steps": 1,
    "train.hyperparameters.max_length": 128,
    "train.hyperparameters.batch_size": 2,
}


def train_cli(
    data: Path, out: Path, env: dict | None = None, **sets
) -> subprocess.CompletedProcess:
    args = []
    for key, value in {**QUICK, **sets}.items():
        args += ["--set", f"{key}={value}"]
    return subprocess.run(
        [sys.executable, "-m", "feinschliff.cli", "train", DEMO, "--data", str(data)]
        + ["--out", str(out), *args],
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        timeout=900,
    )


def assert_adapter_trained(out: Path, model_path: str) -> dict:
    """PEFT loads it; every LoRA B left its zero init; the output moved; returns metrics."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    assert completed_hash(out)
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 16 and cfg["bias"] == "none" and not cfg.get("use_dora")
    assert not cfg.get("modules_to_save")
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    b_mats = {k: v for k, v in weights.items() if "lora_B" in k}
    assert len(b_mats) == 30 * 7  # all-linear on 30 layers
    assert all(v.abs().sum() > 0 for v in b_mats.values())

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    ids = torch.tensor([[1, 4093, 198, 36549, 95, 28, 45202]])
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, str(out / "adapter"))
        after = tuned(ids).logits
    assert not torch.allclose(before, after, atol=1e-5)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and len(metrics["loss_curve"]) == 2
    assert metrics["trainable_parameters"] == 4_884_480
    # what a later warm start compares with production's lineage (train.stage.nothing_new)
    for key in ("dataset_rows_sha256", "train_inputs_sha256"):
        assert re.fullmatch(r"[0-9a-f]{64}", metrics[key]), (key, metrics.get(key))
    assert (out / "loss.png").stat().st_size > 1000
    card = (out / "adapter" / "README.md").read_text()
    assert "base_model: smollm2-135m-instruct" in card and metrics["dataset_sha256"] in card
    return metrics


def test_sft_trains_with_eval_split_and_its_peak_memory_matches_the_estimate(
    demo_model, demo_ingest, tmp_path
):
    """The demo recipe's own batch shape (4 x 256), so the estimate is tested where
    activations, not start-up, dominate memory."""
    from feinschliff.estimate import GIB, estimate_recipe
    from feinschliff.recipe_loader import load_recipe

    sets = {
        "train.hyperparameters.batch_size": 4,
        "train.hyperparameters.max_length": 256,
        "train.hyperparameters.eval_fraction": 0.1,
    }
    p = train_cli(demo_ingest.dir, tmp_path / "sft", **sets)
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = assert_adapter_trained(tmp_path / "sft", demo_model)
    rows = sum(1 for _ in (demo_ingest.dir / "sft.jsonl").open())
    assert metrics["eval_rows"] == round(rows * 0.1) and metrics["train_rows"] == rows - round(
        rows * 0.1
    )
    assert metrics["eval_loss"] > 0 and metrics["trained_tokens"] > 0
    recipe = load_recipe(DEMO, [f"{k}={v}" for k, v in {**QUICK, **sets}.items()])
    predicted = estimate_recipe(recipe, on_gpu=False).training / GIB
    measured = metrics["peak_rss_mb"] / 1024
    print(f"peak RSS {measured:.2f} GiB, estimate {predicted:.2f} GiB")
    assert predicted == pytest.approx(measured, rel=0.25)


@pytest.mark.parametrize("method", ["dpo", "orpo", "kto"])
def test_preference_methods_train(method, demo_model, demo_ingest, tmp_path):
    p = train_cli(demo_ingest.dir, tmp_path / method, **{"train.method": method})
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = assert_adapter_trained(tmp_path / method, demo_model)
    assert metrics["method"] == method
    if method == "kto":  # ingest's kto.jsonl; empty: 2 unpaired rows per preference pair
        kto = demo_ingest.dir / "kto.jsonl"
        pref = demo_ingest.dir / "preference.jsonl"
        want = (
            len(kto.read_text().splitlines())
            if kto.exists() and kto.read_text().strip()
            else 2 * len(pref.read_text().splitlines())
        )
        # rows whose prompt fills max_length (128 here) are dropped by TRL, and counted
        assert metrics["train_rows"] + metrics["dropped_train_rows"] == want
        assert metrics["train_rows"] > 0


def test_sft_packing_assistant_only_loss_and_checkpointing(demo_model, demo_ingest, tmp_path):
    p = train_cli(
        demo_ingest.dir,
        tmp_path / "sft",
        **{
            "train.packing": "true",
            "train.assistant_only_loss": "true",
            "train.hyperparameters.gradient_checkpointing": "true",
        },
    )
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = assert_adapter_trained(tmp_path / "sft", demo_model)
    assert metrics["chat_template"] == "smollm2-training"
    # packed (padding-free) rows of up to 128 tokens, nearly full on this data: 2 x 2 per run
    assert 0.9 * 2 * 2 * 128 <= metrics["trained_tokens"] <= 2 * 2 * 128


def test_qlora_on_cpu_is_refused_before_loading_anything(demo_ingest, tmp_path):
    p = train_cli(demo_ingest.dir, tmp_path / "q", **{"train.qlora": "true"})
    assert p.returncode == 1
    assert "train.qlora needs a CUDA GPU" in p.stderr and not (tmp_path / "q").exists()
