"""What a TRL training across processes (``accelerate launch``) needs beyond one process:
each rank's 4-bit weights on its own GPU, the adapter gathered whole from FSDP or DeepSpeed
ZeRO-3 shards before it is written, and the trained parameters counted whole.

Also right for one process, where each is what it was before: GPU 0, nothing to gather.
"""

from __future__ import annotations

import os
from pathlib import Path

from feinschliff.train.adapter_config import sort_adapter_config


def kbit_device_map() -> dict[str, int]:
    """4-bit weights on this process's own GPU. Without a device map bitsandbytes takes the
    current CUDA device, which is GPU 0 in every rank of ``accelerate launch`` (the model loads
    before the Trainer picks the rank's device), and accelerate then refuses to train a 4-bit
    model "on a different device than the one you're training on". ``LOCAL_RANK`` is set by
    ``accelerate launch``; one process: GPU 0, as before."""
    return {"": int(os.environ.get("LOCAL_RANK", "0"))}


def save_adapter(trainer, adapter_dir: Path) -> None:
    """Write the trained adapter (PEFT format) from the main process; every process calls it.

    Only the trained adapter: a warm-started DPO/KTO also holds TRL's frozen "ref" copy of the
    production adapter, which save_pretrained would write into adapter/ref/. Under FSDP, and
    under DeepSpeed ZeRO-3 once the engine exists (training or an evaluation made it), each
    process holds only a shard of every LoRA weight (ZeRO-3: an empty tensor): all processes
    gather them whole first, as ``Trainer.save_model`` does for checkpoints. The main process
    alone wrote its shards, a truncated or empty adapter (PEFT warns of exactly that).
    """
    state_dict = None
    if trainer.is_deepspeed_enabled:
        if trainer.deepspeed is not None:
            state_dict = trainer.accelerator.get_state_dict(trainer.deepspeed)
    elif trainer.is_fsdp_enabled:
        state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(
            str(adapter_dir),
            state_dict=state_dict,
            safe_serialization=True,
            selected_adapters=["default"],
        )
        sort_adapter_config(adapter_dir)  # PEFT writes module sets in per-process order


def trainable_parameters(model) -> int:
    """The trained (LoRA) parameters, each counted whole: under DeepSpeed ZeRO-3 a process
    holds an empty tensor per partitioned parameter (its size in ``ds_numel``), and
    ``numel()`` counted 0 (as PEFT's ``get_nb_trainable_parameters`` knows)."""
    return sum(
        p.numel() or getattr(p, "ds_numel", 0) for p in model.parameters() if p.requires_grad
    )
