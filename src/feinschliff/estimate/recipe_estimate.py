"""The estimate of a recipe: its training and serving memory on one device, the largest
micro-batch that fits a GPU, and the check ``run_train`` makes before a training with
``train.gpu`` (``check_training_fits``: refused with the numbers when it cannot fit).

The memory terms and their assumptions: ``feinschliff.estimate.memory``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from feinschliff.estimate.hardware import GPU, find_gpu
from feinschliff.estimate.memory import (
    ADAM_BYTES,
    CPU_OVERHEAD_GIB,
    FSDP_GATHERED_LAYERS,
    FUSED_TILE_TOKENS,
    FUSED_TILE_VOCAB,
    GPU_BACKWARD_SHARE,
    GPU_OVERHEAD_GIB,
    LOGIT_COPIES,
    activation_bytes,
    gathered_layer_bytes,
    kv_cache_bytes,
    layer_activation_bytes,
    logit_bytes,
    sharded_weight_bytes,
    shards,
    uses_fused_lm_head,
    weight_bytes,
)
from feinschliff.estimate.shape import DTYPE_BYTES, GIB, EstimateError, model_shape
from feinschliff.estimate.targets import lora_params, target_notes


@dataclass
class Estimate:
    """Sizes in bytes; ``rows`` keep the order they are printed in."""

    rows: dict[str, float] = field(default_factory=dict)
    training: float = 0.0
    inference: float = 0.0
    trainable: int = 0
    n_params: int = 0
    assumptions: list[str] = field(default_factory=list)


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
            seq_len=hp.max_length,
        ),
        **(
            {
                "backward_working_set": GPU_BACKWARD_SHARE
                * tokens
                * layer_activation_bytes(
                    shape,
                    bpv,
                    spec.lora.target_modules,
                    spec.lora.dropout > 0,
                    on_gpu=True,
                    seq_len=hp.max_length,
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
            *shape.describe_deviations(),
            f"LoRA r={spec.lora.r} on {spec.lora.target_modules}: {trainable:,} trainable "
            "(fp32 weights + grads + AdamW m, v)",
            *target_notes(shape, spec.lora.target_modules),
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
