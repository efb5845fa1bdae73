"""A DDP checkpoint is marked complete only after every rank wrote its files.

Real ``torch.distributed`` with two gloo processes on the CPU (no model): rank 1 writes its
``rng_state_1.pth`` late, as a slow rank does; rank 0 must not have written ``.complete``
before that file exists (a kill in between left a "complete" checkpoint without rank 1's RNG
state, which transformers only warns about on resume).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from feinschliff.train.trl_checkpoints import CKPT_MARKER, MarkCheckpoints

pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        ckpt = Path(out) / "checkpoint-4"
        if rank == 0:
            ckpt.mkdir(parents=True)
        dist.barrier()  # the folder exists for both (HF's save_model on rank 0)
        if rank == 1:
            time.sleep(1.5)  # a slow rank still writing its share
            (ckpt / "rng_state_1.pth").write_bytes(b"rng")
        args = SimpleNamespace(output_dir=out)
        state = SimpleNamespace(global_step=4, is_world_process_zero=rank == 0)
        MarkCheckpoints().on_save(args, state, None)
        if rank == 0:  # what a kill right after the marker would leave behind
            (Path(out) / "seen-at-marker").write_text(str((ckpt / "rng_state_1.pth").exists()))
    finally:
        dist.destroy_process_group()


def test_marker_waits_for_every_rank(tmp_path: Path) -> None:
    mp.start_processes(
        _rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    ckpt = tmp_path / "checkpoint-4"
    assert (ckpt / CKPT_MARKER).read_text() == "4"
    assert (tmp_path / "seen-at-marker").read_text() == "True"


def test_single_process_marks_without_a_process_group(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    assert not dist.is_initialized()
    state = SimpleNamespace(global_step=2, is_world_process_zero=True)
    MarkCheckpoints().on_save(SimpleNamespace(output_dir=str(tmp_path)), state, None)
    assert (ckpt / CKPT_MARKER).read_text() == "2"
