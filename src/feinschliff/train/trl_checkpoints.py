"""Checkpoints of a TRL training: the completeness marker written after each save, the last
complete checkpoint to resume from, and finishing a run from its final checkpoint.

A checkpoint counts only once its ``.complete`` marker exists (written after HF's save returns),
so a run killed mid-save resumes from the previous one. Each checkpoint also keeps the wall and
CPU seconds trained up to it (``CKPT_TIME``): a resumed run's ``wall_seconds`` adds them to its
own. A save that fails for want of disk space is a ``DiskFull`` naming the folder
(``naming_disk_full``), not tokenizers' bare "No space left on device (os error 28)".
"""

from __future__ import annotations

import errno
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

from feinschliff.train.adapter_config import sort_adapter_config
from feinschliff.train.trl_rows import TrainingFailed

CKPT_MARKER = ".complete"
CKPT_TIME = "feinschliff_time.json"  # {"wall_seconds", "cpu_seconds"} trained up to here

log = logging.getLogger(__name__)


class DiskFull(TrainingFailed):
    """A checkpoint or the adapter could not be written: no space left on the device."""


class MarkCheckpoints(TrainerCallback):
    """Write a completeness marker into each checkpoint after the Trainer saved it, with the
    training time so far and its adapter_config.json in a stable order first."""

    def __init__(self) -> None:
        self.start_clock(None)

    def start_clock(self, resume: Path | None) -> None:
        """Count from now, on top of the time trained up to ``resume`` (its ``CKPT_TIME``)."""
        self.before = checkpoint_seconds(resume) if resume is not None else (0.0, 0.0)
        self.started = (time.perf_counter(), time.process_time())

    def elapsed(self) -> tuple[float, float]:
        """(wall, cpu) seconds of the whole training: the resumed checkpoint's and this run's."""
        return (
            self.before[0] + time.perf_counter() - self.started[0],
            self.before[1] + time.process_time() - self.started[1],
        )

    def on_save(self, args, state, control, **kwargs):  # noqa: D102
        # Every rank writes its own files into the checkpoint (rng_state_<rank>.pth, sharded
        # optimizer states) and HF does not wait for them: mark only once all ranks are done.
        wait_for_all_ranks()
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and ckpt.is_dir():
            with naming_disk_full(ckpt):
                sort_adapter_config(ckpt)
                wall, cpu = self.elapsed()
                times = {"wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2)}
                (ckpt / CKPT_TIME).write_text(json.dumps(times))
                (ckpt / CKPT_MARKER).write_text(str(state.global_step))


def checkpoint_seconds(checkpoint: Path) -> tuple[float, float]:
    """(wall, cpu) seconds trained up to ``checkpoint``; (0, 0) for one saved without them
    (by an older feinschliff): then only the resumed part is counted, as before."""
    try:
        times = json.loads((checkpoint / CKPT_TIME).read_text(encoding="utf-8"))
        return float(times["wall_seconds"]), float(times["cpu_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0, 0.0


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the device is full: an ``OSError`` ENOSPC, or
    the Rust libraries' text (tokenizers: "No space left on device (os error 28)", safetensors:
    "StorageFull"), which raise a bare ``Exception`` without errno."""
    seen: BaseException | None = exc
    for _ in range(5):  # the cause chain, bounded
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        text = str(seen)
        if "os error 28" in text or "No space left on device" in text or "StorageFull" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def naming_disk_full(folder: Path) -> Iterator[None]:
    """Turn a full disk while writing into ``folder`` into a ``DiskFull`` naming it; any
    other error passes unchanged. Only around saves, never around training as a whole."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        raise DiskFull(
            f"no space left on device while writing {folder}: free space there (or train into "
            "another --out) and rerun; training resumes from the last complete checkpoint"
        ) from exc


def saving_checkpoints_named(trainer_cls):
    """``trainer_cls`` whose checkpoint saves report a full disk as ``DiskFull`` naming the
    checkpoint folder (``naming_disk_full``). The Trainer saves checkpoints deep inside
    ``train()``; this is the one place the save itself can be wrapped."""

    class NamedSaves(trainer_cls):
        def _save_checkpoint(self, model, trial):
            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            with naming_disk_full(folder):
                return super()._save_checkpoint(model, trial)

    NamedSaves.__name__ = NamedSaves.__qualname__ = trainer_cls.__name__
    return NamedSaves


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
