"""One writer per output folder: ``generate`` and ``mix`` hold their ``--out`` for a whole run.

Two runs on one output wreck each other: the second one's ``prepare_out`` and its cleanup of
``.work``/``distiset`` delete what the first is writing, and both end failed or with the other's
rows. The lock is ``feinschliff.pipeline.run_lock`` (an ``flock``, gone with its process, so a
rerun after a kill is not blocked) on ``.<name>.lock`` beside the output, as the train-stage flow
holds its output: inside it, ``prepare_out`` would delete it with the folder. A second run is
refused at once, naming the holder. The callers check their arguments and seeds first: a
refused run creates no folder. A lock that cannot be created (a read-only parent folder) is
skipped only when the output is complete and simply reused (``reuse``); otherwise it is an
``OutputLockError`` naming the folder: an ``OutputInUse`` (a wrong output path, exit 2, as an
output folder the OS cannot create), not an ``OutputBusy``, so that no stage reports it as a
failed run.

An output that is, holds or lies inside an input folder (``--out`` inside ``--feedback``) is
refused before anything is written (``refuse_overlap``): its files, or the lock beside it,
would change the input's content and void its ``.complete`` marker.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from feinschliff.artifacts import OutputInUse


class OutputBusy(RuntimeError):
    """Another run is writing the output folder (exit 1, as a refused train-stage run)."""


class OutputLockError(OutputInUse):
    """The lock beside the output cannot be created (its parent folder is read-only)."""


@contextmanager
def hold_output(out: Path, reuse: bool = False) -> Iterator[None]:
    """Hold ``out`` while the block runs; ``OutputBusy`` at once if another run holds it.

    ``reuse``: ``out`` is complete with the run's key, so the block only reads it: a lock that
    cannot be created is skipped then (a finished output under a read-only parent)."""
    from feinschliff.pipeline import RunInProgress, run_lock

    target = Path(out).resolve()  # ./gen and /abs/gen are one output, one lock
    name = f".{target.name}.lock"
    with ExitStack() as stack:
        try:
            stack.enter_context(run_lock(target.parent, name=name))
        except OSError as exc:
            if not reuse:
                raise OutputLockError(
                    f"cannot create the lock {target.parent / name} for the output {out} "
                    f"({exc.strerror or exc}): its parent folder must be writable"
                ) from None
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


def refuse_overlap(flag: str, out: Path, inputs: dict[str, Path | None]) -> None:
    """Refuse ``out`` (given as ``flag``) when it is, holds or lies inside one of ``inputs``
    (name -> folder; None: not given), as train refuses an ``--out`` overlapping its data.

    Raises:
        OutputInUse: naming both folders (the CLI exits 2).
    """
    target = Path(out).resolve()
    for what, folder in inputs.items():
        if folder is None:
            continue
        src = Path(folder).resolve()
        if target == src or src in target.parents or target in src.parents:
            raise OutputInUse(
                f"{flag} {out} overlaps the {what} folder {folder}: "
                "choose a separate output folder (nothing was written)"
            )
