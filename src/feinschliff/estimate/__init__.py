"""Memory and cost estimate for a recipe's training and for serving its adapter.

Plans a training before it runs: weights (by dtype / 4-bit), LoRA parameters, optimizer states,
gradients, activations (sequence length, micro-batch, checkpointing), the KV cache for serving;
compares them with the GPUs in ``configs/hardware.yaml`` (fits or not, the largest micro-batch
that fits, GPU-hours and EUR for the dataset, rent-vs-buy break-even). ``run_train`` calls
``check_training_fits`` so a recipe with ``train.gpu`` that cannot fit is refused with numbers.

The parts, each a module of this package (everything is importable from here):

- ``shape``: the model's shape from its ``config.json`` and its parameter counts;
- ``targets``: the layers ``train.lora.target_modules`` adapts and their LoRA parameters;
- ``memory``: the memory terms (weights, LoRA states, activations, logits, KV cache, sharding),
  the assumptions and calibration behind them, and the talk's reference table;
- ``hardware``: the GPUs of ``configs/hardware.yaml``, this machine's memory, training cost and
  break-even;
- ``recipe_estimate``: a recipe's estimate, the largest micro-batch that fits, the fit check;
- ``dataset``: the tokens of a training over an ingest output (``estimate --data``).
"""

from __future__ import annotations

from feinschliff.estimate.dataset import (
    SHORT_ROW_SHARE,
    dataset_tokens,
    row_tokens,
    short_rows_note,
    trained_tokens,
)
from feinschliff.estimate.hardware import (
    DEFAULT_MFU,
    GPU,
    find_gpu,
    flops_per_token,
    hardware_file,
    load_gpus,
    recipe_flops_per_token,
    total_ram_bytes,
    training_cost,
)
from feinschliff.estimate.memory import (
    ADAM_BYTES,
    CPU_FUSED_TILE_FP32_COPIES,
    CPU_OVERHEAD_GIB,
    FSDP_GATHERED_LAYERS,
    FUSED_STATS_BYTES,
    FUSED_TILE_TOKENS,
    FUSED_TILE_VOCAB,
    GPU_BACKWARD_SHARE,
    GPU_OVERHEAD_GIB,
    LOGIT_COPIES,
    NF4_BYTES,
    activation_bytes,
    fmt_gib,
    gathered_layer_bytes,
    korthikanti_layer_bytes,
    kv_cache_bytes,
    layer_activation_bytes,
    logit_bytes,
    reference_table,
    sharded_weight_bytes,
    shards,
    uses_fused_lm_head,
    weight_bytes,
)
from feinschliff.estimate.recipe_estimate import (
    Estimate,
    check_training_fits,
    estimate_recipe,
    largest_fitting_batch,
)
from feinschliff.estimate.shape import (
    DTYPE_BYTES,
    GIB,
    KNOWN_SHAPES,
    LINEAR_MODULES,
    EstimateError,
    ModelShape,
    model_shape,
    resolve_config,
)
from feinschliff.estimate.targets import (
    EMBEDDING_MODULES,
    LoraTargets,
    adapted_linears,
    lora_params,
    lora_targets,
    target_notes,
)

__all__ = [
    "ADAM_BYTES",
    "CPU_FUSED_TILE_FP32_COPIES",
    "CPU_OVERHEAD_GIB",
    "DEFAULT_MFU",
    "DTYPE_BYTES",
    "EMBEDDING_MODULES",
    "Estimate",
    "EstimateError",
    "FSDP_GATHERED_LAYERS",
    "FUSED_STATS_BYTES",
    "FUSED_TILE_TOKENS",
    "FUSED_TILE_VOCAB",
    "GIB",
    "GPU",
    "GPU_BACKWARD_SHARE",
    "GPU_OVERHEAD_GIB",
    "KNOWN_SHAPES",
    "LINEAR_MODULES",
    "LOGIT_COPIES",
    "LoraTargets",
    "ModelShape",
    "NF4_BYTES",
    "SHORT_ROW_SHARE",
    "activation_bytes",
    "adapted_linears",
    "check_training_fits",
    "dataset_tokens",
    "estimate_recipe",
    "find_gpu",
    "flops_per_token",
    "fmt_gib",
    "gathered_layer_bytes",
    "hardware_file",
    "korthikanti_layer_bytes",
    "kv_cache_bytes",
    "largest_fitting_batch",
    "layer_activation_bytes",
    "load_gpus",
    "logit_bytes",
    "lora_params",
    "lora_targets",
    "model_shape",
    "recipe_flops_per_token",
    "reference_table",
    "resolve_config",
    "row_tokens",
    "sharded_weight_bytes",
    "shards",
    "target_notes",
    "short_rows_note",
    "total_ram_bytes",
    "trained_tokens",
    "training_cost",
    "uses_fused_lm_head",
    "weight_bytes",
]
