"""PyTorch's CUDA allocator for a training: expandable segments unless the user chose otherwise.

The default caching allocator keeps every segment it ever carved. A training that allocates
tensors of very different sizes (ORPO builds the whole batch x length x vocabulary logits; a
packed micro-batch is one long row) leaves the cache far above what is allocated: on an H100,
ORPO on Llama-3.1-8B at 4 pairs x 2048 tokens allocated 39.5 GiB but held 54.9 GiB of the card,
above the estimate `feinschliff estimate` gives and `run` checks the GPU against. Expandable
segments grow and shrink one mapping instead: 44.8 GiB held, the same tokens/s
(bench/README.md "gpu_train.py", session 18). Setting either allocator variable yourself
(``PYTORCH_ALLOC_CONF`` or ``PYTORCH_CUDA_ALLOC_CONF``) turns this off.

Set for the training only: vLLM's sleep mode (its CuMemAllocator) asserts that the variable
does not ask for expandable segments, and a process started after the training (a Prefect
worker's next flow, a script calling the library) inherits the environment, so the variable is
put back afterwards. The in-process allocator keeps the setting (vLLM never runs in-process).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

ALLOC_VARS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")
EXPANDABLE = "expandable_segments:True"


_LOCK = threading.Lock()
_held = {"count": 0, "before": None}  # trainings of this process inside the block; what was set


@contextmanager
def expandable_segments(on_cuda: bool) -> Iterator[bool]:
    """Within the block, CUDA memory of this process and of the training children (accelerate's
    ranks, Axolotl) uses expandable segments; yields whether this set it (False: no CUDA, or
    the user set an allocator variable). Two trainings in threads of one process share it: the
    variable goes back to what it was (unset, or an empty value) when the last one ends."""
    with _LOCK:
        ours = _held["count"] > 0
        chosen = " ".join(os.environ.get(name, "") for name in ALLOC_VARS).strip()
        if not on_cuda or (not ours and chosen):
            if on_cuda and not ours and "expandable_segments:True" not in chosen:
                log.warning(
                    "train: your CUDA allocator setting (%s) has no expandable segments: the "
                    "allocator's cache may hold more than `feinschliff estimate` counts",
                    chosen,
                )
            ours = None
        elif not ours:
            _held["before"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
            os.environ["PYTORCH_CUDA_ALLOC_CONF"] = EXPANDABLE  # children read it at start-up
            _apply_in_process()
            log.info("train: CUDA allocator with expandable segments (PYTORCH_ALLOC_CONF chooses)")
        if ours is not None:
            _held["count"] += 1
    if ours is None:
        yield False
        return
    try:
        yield True
    finally:
        with _LOCK:
            _held["count"] -= 1
            if _held["count"] == 0:
                before = _held["before"]
                if before is None:
                    os.environ.pop("PYTORCH_CUDA_ALLOC_CONF", None)
                else:
                    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = before


def _apply_in_process() -> None:
    """The allocator of this process may have read its settings already (any CUDA call does):
    apply them at run time too; new segments follow them."""
    torch = sys.modules.get("torch")
    if torch is None:  # not imported yet: it reads the variable when CUDA starts
        return
    try:
        with warnings.catch_warnings():  # deprecated alias in torch 2.13, the only one in 2.11
            warnings.simplefilter("ignore", FutureWarning)
            torch.cuda.memory._set_allocator_settings(EXPANDABLE)
    except (AttributeError, RuntimeError) as exc:  # another torch: the variable still works
        log.debug("train: allocator settings not applied in process: %s", exc)
