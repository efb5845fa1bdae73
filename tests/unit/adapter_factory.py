"""Tiny on-disk base models and PEFT-format LoRA adapters for unit tests (numpy + safetensors,
no torch): real safetensors headers and real adapter_config.json fields, kilobytes in size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from feinschliff.artifacts import AdapterRef, mark_complete
from feinschliff.serving.preflight import BaseTarget

HIDDEN, KV, INTER, VOCAB, LAYERS = 8, 4, 16, 32, 2
# module -> (out, in) of the base weight
SHAPES = {
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (KV, HIDDEN),
    "self_attn.v_proj": (KV, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (INTER, HIDDEN),
    "mlp.up_proj": (INTER, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTER),
}


def make_base(path: Path, hidden_scale: int = 1) -> Path:
    """A llama-shaped model folder: config.json + model.safetensors (tied embeddings)."""
    path.mkdir(parents=True, exist_ok=True)
    tensors = {"model.embed_tokens.weight": np.zeros((VOCAB, HIDDEN * hidden_scale), np.float32)}
    for i in range(LAYERS):
        for mod, (out, inp) in SHAPES.items():
            shape = (out * hidden_scale, inp * hidden_scale)
            tensors[f"model.layers.{i}.{mod}.weight"] = np.zeros(shape, np.float32)
        tensors[f"model.layers.{i}.input_layernorm.weight"] = np.ones(HIDDEN, np.float32)
    save_file(tensors, str(path / "model.safetensors"))
    config = {"architectures": ["LlamaForCausalLM"], "tie_word_embeddings": True}
    (path / "config.json").write_text(json.dumps(config))
    return path


def adapter_config(base: str, **over) -> dict:
    """What peft 0.21 writes (trimmed to the fields vLLM and preflight read)."""
    cfg = {
        "peft_type": "LORA",
        "base_model_name_or_path": base,
        "r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": ["q_proj", "v_proj"],
        "modules_to_save": None,
        "use_dora": False,
        "use_rslora": False,
        "lora_bias": False,
        "init_lora_weights": True,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layer_replication": None,
        "alora_invocation_tokens": None,
        "task_type": "CAUSAL_LM",
    }
    cfg.update(over)
    return cfg


def make_adapter(
    path: Path,
    base: str,
    *,
    rank: int = 8,
    hidden_scale: int = 1,
    seed: float = 1.0,
    config: dict | None = None,
    extra_tensors: dict | None = None,
) -> Path:
    """adapter_config.json + adapter_model.safetensors fitting make_base(hidden_scale)."""
    path.mkdir(parents=True, exist_ok=True)
    cfg = config or adapter_config(base, r=rank)
    tensors = {}
    for i in range(LAYERS):
        for leaf in cfg["target_modules"]:
            mod = next(m for m in SHAPES if m.endswith(leaf))
            out, inp = (s * hidden_scale for s in SHAPES[mod])
            key = f"base_model.model.model.layers.{i}.{mod}"
            tensors[f"{key}.lora_A.weight"] = np.full((rank, inp), seed, np.float32)
            tensors[f"{key}.lora_B.weight"] = np.full((out, rank), seed, np.float32)
    tensors.update(extra_tensors or {})
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    return path


def make_train_output(path: Path, base: str, **kw) -> AdapterRef:
    """A train-stage output folder (adapter/ + metrics.json + .complete) as the registry takes."""
    make_adapter(path / "adapter", base, **kw)
    (path / "metrics.json").write_text(json.dumps({"method": "sft", "loss_curve": []}))
    return AdapterRef(path=str(path), sha256=mark_complete(path))


def target_for(base_dir: Path, max_lora_rank: int = 16) -> BaseTarget:
    return BaseTarget(names=(str(base_dir),), weights_dir=base_dir, max_lora_rank=max_lora_rank)
