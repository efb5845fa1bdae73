"""Checkpoints of a TRL training: the completeness marker written after each save, the last
complete checkpoint to resume from, and finishing a run from its final checkpoint.

A checkpoint counts only once its ``.complete`` marker exists (written after HF's save returns),
so a run killed mid-save resumes from the previous one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import TrainerCallback

CKPT_MARKER = ".complete"

log = logging.getLogger(__name__)


class MarkCheckpoints(TrainerCallback):
    """Write a completeness marker into each checkpoint after the Trainer saved it."""

    def on_save(self, args, state, control, **kwargs):  # noqa: D102
        # Every rank writes its own files into the checkpoint (rng_state_<rank>.pth, sharded
        # optimizer states) and HF does not wait for them: mark only once all ranks are done.
        wait_for_all_ranks()
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and ckpt.is_dir():
            (ckpt / CKPT_MARKER).write_text(str(state.global_step))


def wait_for_all_ranks() -> None:
    """A barrier across the ranks of a distributed run; nothing in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def last_complete_checkpoint(ckpt_dir: Path) -> Path | None:
    done = [p for p in ckpt_dir.glob("checkpoint-*") if (p / CKPT_MARKER).exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def reached_max_steps(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` was saved at the run's last step (its ``trainer_state.json``).

    transformers resumed from there does not stop at once: when max_steps is not a multiple of
    the steps per epoch it trains one more batch before it checks the step count again.
    """
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    return 0 < int(state.get("max_steps") or 0) <= int(state.get("global_step") or 0)


def finish_from_checkpoint(trainer, checkpoint: Path) -> None:
    """Take the adapter weights and trainer state (step, log history, tokens seen) of the final
    ``checkpoint`` instead of training: a run killed after saving it, before its adapter, ends
    as the uninterrupted run did."""
    from transformers import TrainerState

    weights = checkpoint / "adapter_model.safetensors"
    if weights.exists():  # PEFT's save, also of sharded (FSDP, ZeRO-3) runs: the main process
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(trainer.model, load_file(str(weights)), adapter_name="default")
    else:
        trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))


def final_eval_loss(trainer) -> float | None:
    """The eval loss of the trained adapter: the one logged at the final step (with eval_steps
    transformers evaluates there itself), else a final evaluation now. None (with a warning)
    where there is nothing to evaluate: an eval set max_length emptied gives no eval_loss."""
    history = trainer.state.log_history
    last = next((e for e in reversed(history) if "eval_loss" in e), None)
    if last is not None and last.get("step") == trainer.state.global_step:
        return last["eval_loss"]
    if trainer.eval_dataset is None or len(trainer.eval_dataset) == 0:
        log.warning("no eval row to evaluate: eval loss not measured")
        return None
    loss = trainer.evaluate().get("eval_loss")
    if loss is None:
        log.warning("the final evaluation gave no eval_loss: eval loss not measured")
    return loss
