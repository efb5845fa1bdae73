"""One writer per output folder: ``generate`` and ``mix`` hold their ``--out`` for a whole run.

Two runs on one output wreck each other: the second one's ``prepare_out`` and its cleanup of
``.work``/``distiset`` delete what the first is writing, and both end failed or with the other's
rows. The lock is ``feinschliff.pipeline.run_lock`` (an ``flock``, gone with its process, so a
rerun after a kill is not blocked) on ``.<name>.lock`` beside the output, as the train-stage flow
holds its output: inside it, ``prepare_out`` would delete it with the folder. A second run is
refused at once, naming the holder.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path


class OutputBusy(RuntimeError):
    """Another run is writing the output folder (exit 1, as a refused train-stage run)."""


@contextmanager
def hold_output(out: Path) -> Iterator[None]:
    """Hold ``out`` while the block runs; ``OutputBusy`` at once if another run holds it."""
    from feinschliff.pipeline import RunInProgress, run_lock

    target = Path(out).resolve()  # ./gen and /abs/gen are one output, one lock
    name = f".{target.name}.lock"
    with ExitStack() as stack:
        try:
            stack.enter_context(run_lock(target.parent, name=name))
        except RunInProgress:
            try:
                holder = (target.parent / name).read_text(encoding="utf-8").strip()
            except OSError:
                holder = ""
            raise OutputBusy(
                f"{out} is being written by another run ({holder or 'another process'}): wait "
                "for it to finish, or choose another output folder"
            ) from None
        yield
