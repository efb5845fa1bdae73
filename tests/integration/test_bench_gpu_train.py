"""bench/gpu_train.py end to end on CPU: the GPU benchmark's own machinery (random weights of a
given shape, rows that fill max_length, per-step timing, estimates beside the measurements,
the packed run) on a tiny Llama shape with the demo model's tokenizer, so the script that
measured the H100 figures in bench/results/ keeps working between GPU sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 49152,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}


def test_gpu_bench_trains_full_length_rows_and_the_sample_packed_and_not(
    demo_model, demo_ingest, tmp_path
):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_LLAMA))
    results = tmp_path / "results.json"
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_train.py"), "--tokenizer", demo_model]
    cmd += ["--random-weights", str(config), "--steps", "2", "--batch", "1", "2"]
    cmd += ["--max-length", "64", "--sample-data", demo_ingest.path, "--packing"]
    cmd += ["--set", "base_model.dtype=float32", "--results", str(results)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FEINSCHLIFF_HOME": str(tmp_path / "home")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {r["label"]: r for r in json.loads(results.read_text())}
    # support-de-8b: micro-batch 4 x accumulation 4; the first run keeps the accumulation, the
    # second keeps the 16 sequences per step
    assert set(runs) == {"long-b1-ga4", "long-b2-ga8", "sample-rows", "sample-rows-packed"}
    for label, seqs in (("long-b1-ga4", 4), ("long-b2-ga8", 16)):  # every one at max_length
        assert runs[label]["metrics"]["trained_tokens"] == 2 * seqs * 64
        assert [s["step"] for s in runs[label]["steps"]] == [1, 2]
    assert runs["long-b2-ga8"]["estimate"]["training_gib"] > 0
    plain, packed = runs["sample-rows"], runs["sample-rows-packed"]
    assert "train.packing=true" in packed["sets"] and "train.packing=true" not in plain["sets"]
    assert plain["metrics"]["trained_tokens"] > 0 and packed["metrics"]["trained_tokens"] > 0
    assert "packing / no packing, real tokens/s" in proc.stdout
    assert "| long-b1-ga4 |" in proc.stdout


def test_gpu_bench_writes_a_loadable_random_checkpoint_for_qlora(tmp_path):
    """QLoRA quantizes while loading, so the bench saves random weights of the config's shape
    as a checkpoint that the stage's own load_model reads (on a GPU; here the write and a plain
    load on CPU)."""
    from transformers import AutoModelForCausalLM

    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_train.py"), "--write-checkpoint"]
    cmd += [str(tmp_path), "--dtype", "bfloat16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.config.hidden_size == TINY_LLAMA["hidden_size"]
    assert model.config.num_hidden_layers == TINY_LLAMA["num_hidden_layers"]
    assert str(model.dtype) == "torch.bfloat16"
    assert sum(p.numel() for p in model.parameters()) > 49152 * 64
