"""Memory terms of a training and of serving: weights, LoRA states, activations, logits, KV
cache, sharding; and the talk's reference table (``reference_table``).

Assumptions of feinschliff's own estimate (all sizes in GiB = 2**30 bytes):

- Weights: every parameter in ``base_model.dtype``; QLoRA: linear layers in NF4 with double
  quantization (4.127 bits), embeddings and head in 16 bit. Attention widths use the config's
  ``head_dim`` where it has one (Qwen3-4B: 32 x 128 = 4096 query width on a 2560 hidden size).
- LoRA (PEFT keeps adapter weights in fp32): 4 bytes weights + 4 bytes gradients + 8 bytes
  AdamW moments (m and v, fp32) per trainable parameter. Frozen weights get no gradient.
- Activations of a Llama-style decoder with PEFT LoRA, per token and layer: the tensors autograd
  keeps, as measured on the saved-tensor hooks (``layer_activation_bytes``; all-linear, 16-bit
  weights: 24h + 4·kv + 8·I bytes). Attention runs as SDPA (no s² score matrix), except
  Gemma 2's eager attention (heads x s scores per token). Other families' extra norms, q/k
  norms and fused projections: ``layer_activation_bytes``, checked against transformers' models
  (tests/unit/test_estimate_families.py). With gradient checkpointing only each layer's input
  (h values) stays, plus one layer's set.
- Backward working set (GPU): while autograd runs one layer's backward, the gradients of that
  layer's tensors exist next to its saved ones: 0.6 x one layer's saved set per token, measured
  on an H100 (``bench/gpu_train.py``, support-de-8b: 1.33 GiB per extra 2048-token sequence
  against 1.04 counted from the saved tensors alone; ``bench/results/``). With it the SFT
  totals at micro-batch 4 and 16, the DPO ones at 2 and 4 pairs and the KTO ones at 4 and 8
  come within 2.3 % of the device memory in use. Measured for 16-bit LoRA; QLoRA gets the same share, unmeasured. Not
  added on CPU, where the demo's measured peaks already agree without it (see below).
- Logits: TRL's SFT, DPO and KTO trainers patch the model with a fused LM head
  (``trl.trainer.utils.add_fused_lm_head``, always on) that projects 4096 tokens x 32768 vocab
  entries at a time: one tile, the gathered final hidden states and their fp32 gradient. ORPO
  (``trl.experimental.orpo``) and the Axolotl backend build the whole batch x length x vocab
  logits: three fp32 copies (logits, log-softmax, gradient). With a 16-bit model that is high:
  on the H100 ORPO allocated ~6.5 bytes per logit (16-bit logits, fp32 log-softmax), so its
  totals are 9-12 % above the device memory in use (conservative; kept, as the transient
  copies depend on TRL's code). They hold only with expandable segments, which the train stage
  sets (``train/allocator.py``): without them the cache held 55 GiB against 50 estimated.
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

``reference_table`` reproduces the 8B table of the talk "LLMs im Selbstbetrieb" (slide "Speicherbedarf") under *its*
assumptions (those of the LLM System Requirements calculator it links), which differ.
"""

from __future__ import annotations

from feinschliff.estimate.shape import DTYPE_BYTES, GIB, ModelShape
from feinschliff.estimate.targets import adapted_linears
from feinschliff.specs.train import SHARDED_CONFIGS

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
# A layer's backward holds gradients next to its saved tensors: share of one layer's saved set
# per token (H100, 8B SFT with checkpointing: 696 KB/token measured vs 543 KB/token counted).
GPU_BACKWARD_SHARE = 0.6
ADAM_BYTES = 8


# --------------------------------------------------------------------------- components


def weight_bytes(shape: ModelShape, dtype: str, qlora: bool = False) -> float:
    if not qlora:
        return shape.n_params * DTYPE_BYTES[dtype]
    dense = shape.n_params - shape.layers * shape.linear_params  # embeddings, norms, biases
    return (shape.n_params - dense) * NF4_BYTES + dense * 2


def kv_cache_bytes(layers: int, kv_width: int, tokens: int, bytes_per_value: float) -> float:
    """K and V for ``tokens`` tokens (batch x sequence) in every layer."""
    return 2 * layers * kv_width * tokens * bytes_per_value


def attention_score_bytes(shape: ModelShape, bytes_per_value: float) -> float:
    """Bytes per attention score that eager attention keeps (Gemma 2, measured like the rest):
    the fp32 softmax output, its cast back to 16 bit, and tanh's output when the logits are
    soft-capped. SDPA keeps no scores."""
    if not shape.eager_softcap:
        return 0
    return 4 + (bytes_per_value if bytes_per_value < 4 else 0) + bytes_per_value


def layer_activation_bytes(
    shape: ModelShape,
    bytes_per_value: float,
    targets: str | list[str],
    lora_dropout: bool,
    *,
    on_gpu: bool = True,
    seq_len: int = 0,
) -> float:
    """Bytes per token one decoder layer keeps for the backward pass.

    Measured on autograd's saved tensors (Llama, PEFT LoRA, SDPA; all-linear with 16-bit weights
    under autocast: 24h + 4·kv + 8·I bytes, 1.28x the 7h + 3·kv + 4·I values counted before):
    - each RMSNorm upcasts its input to fp32 and keeps that copy (2 x 4h bytes; Gemma 2 and 3
      have four per layer; Qwen3's and Gemma 3's q and k norms 4·(q + kv) more);
    - SDPA keeps q, k, v and its output (2q + 2·kv values, q the query width: heads x
      head_dim); SwiGLU keeps the gate projection (SiLU's input), SiLU(gate) and the up
      projection (3·I values; GELU and Phi-3's fused gate_up alike). Gemma 2's eager attention
      keeps q and the k and v repeated to all heads (3q) and, per token, heads x ``seq_len``
      scores (``attention_score_bytes``);
    - every adapted linear keeps its input for the adapter's weight gradient. With 16-bit weights
      PEFT casts that input to the fp32 adapter dtype and autocast casts it back: a fresh 16-bit
      copy per adapter (q/k/v/gate/up: h each, o: q, down: I). With fp32 weights both casts are
      no-ops, so q/k/v share the norm output, gate/up the other one, o SDPA's output, unless
      LoRA dropout gives each adapter its own input;
    - LoRA dropout keeps its mask per adapter: bool on CUDA (fused dropout), a fp32 tensor on
      CPU (ATen multiplies by a mask in the input's dtype, fp32 after PEFT's cast).
    The frozen base linears keep nothing: their weight needs no gradient.
    """
    h, q, kv, i = shape.hidden, shape.q_width, shape.kv_width, shape.intermediate
    adapted = adapted_linears(shape, targets)
    adapter_inputs = sum(n_in for n_in, _ in adapted.values())
    norms = shape.norms_per_layer * h * 4 + (4 * (q + kv) if shape.qk_norm else 0)
    if shape.eager_softcap:
        attention = 3 * q * bytes_per_value
        attention += shape.heads * seq_len * attention_score_bytes(shape, bytes_per_value)
    else:
        attention = (2 * q + 2 * kv) * bytes_per_value
    kept = norms + attention + 3 * i * bytes_per_value
    if bytes_per_value < 4 or lora_dropout:
        kept += adapter_inputs * bytes_per_value
    else:
        names = adapted.keys()
        shared = (
            h * bool(names & {"q_proj", "k_proj", "v_proj", "qkv_proj"})
            + h * bool(names & {"gate_proj", "up_proj", "gate_up_proj"})
            + i * ("down_proj" in names)
            # eager attention keeps no output: o's adapter keeps it
            + q * (shape.eager_softcap and "o_proj" in names)
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
    seq_len: int = 0,
) -> float:
    """What the decoder layers keep for the backward pass (the LM head: ``logit_bytes``);
    ``seq_len``: the sequence length, for attention that keeps its scores (Gemma 2)."""
    per_layer = layer_activation_bytes(
        shape, bytes_per_value, targets, lora_dropout, on_gpu=on_gpu, seq_len=seq_len
    )
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


# --------------------------------------------------------------------------- sharding


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
    linear = shape.linear_params
    dense = shape.layer_params - linear  # norms and biases stay 16 bit under QLoRA
    layer = linear * NF4_BYTES + dense * 2 if qlora else shape.layer_params * DTYPE_BYTES[dtype]
    return FSDP_GATHERED_LAYERS * (layer + trainable / shape.layers * 4)


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
