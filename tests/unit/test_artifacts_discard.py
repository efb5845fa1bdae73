"""A run killed while it discards another configuration's leftovers must not leave a folder
that its rerun refuses (or trusts)."""

from __future__ import annotations

import contextlib
import os

import pytest

from feinschliff.artifacts import completed_hash, mark_complete, prepare_out, reusable


class Killed(BaseException):
    """SIGKILL, as far as the code under test can tell: nothing after it runs."""


def _listed_stamp_first(monkeypatch, first: bool) -> None:
    """Directory listings in an order that puts the ``.inputs`` stamp first (or last), as a
    file system's own order may (ext4 lists by a per-file-system name hash)."""
    real = os.scandir

    class Listing(list):
        def __enter__(self):
            return iter(self)

        def __exit__(self, *exc):
            return False

        def close(self):
            pass

    def scandir(path="."):
        with real(path) as it:
            entries = list(it)
        return Listing(sorted(entries, key=lambda e: (e.name == ".inputs") != first))

    monkeypatch.setattr(os, "scandir", scandir)


def _kill_after(monkeypatch, deletions: int) -> None:
    real = os.unlink
    done = [0]

    def unlink(path, *args, **kwargs):
        if done[0] >= deletions:
            raise Killed
        done[0] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)


@pytest.mark.parametrize("stamp_first", [True, False])
@pytest.mark.parametrize("deletions", range(7))
def test_a_kill_while_discarding_leftovers_leaves_a_folder_the_rerun_takes(
    tmp_path, stamp_first, deletions
):
    """prepare_out deleted the folder whole: a kill after the stamp was gone and before the
    rest left unstamped leftovers, and every rerun failed with "no feinschliff stage wrote it"
    until someone deleted the folder by hand."""
    root = tmp_path / "run" / "train"
    prepare_out(root, "old-key", "train")
    (root / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    for name in ("optimizer.pt", "adapter_model.safetensors"):
        (root / "checkpoints" / "checkpoint-10" / name).write_text("x")
    (root / "metrics.json").write_text("{}")
    intact = mark_complete(root, stage="train", key="old-key")

    with pytest.MonkeyPatch.context() as mp:
        _listed_stamp_first(mp, stamp_first)
        _kill_after(mp, deletions)
        with contextlib.suppress(Killed):
            prepare_out(root, "new-key", "train")
        # a half-deleted folder is never trusted: intact (no deletion yet) or no valid marker
        assert completed_hash(root) in (None, intact) and reusable(root, "new-key") is None

    prepare_out(root, "new-key", "train")  # the rerun
    assert sorted(p.name for p in root.iterdir()) == [".inputs"]
    assert (root / ".inputs").read_text().split() == ["new-key", "train"]
