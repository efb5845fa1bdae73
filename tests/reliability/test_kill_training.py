"""Row "kill -9 during training": `feinschliff train` on the demo model is SIGKILLed at a random
moment (before the first checkpoint, mid-step, or while a checkpoint is being written), then
rerun. Pass: the rerun starts from the highest checkpoint that had its completeness marker at
kill time (never from a half-written one) and the final adapter has trained max_steps.

Each trial's two runs are forked from one pre-imported interpreter (tests/reliability/zygote.py):
real processes and a real SIGKILL, with the ~10 s import paid once per module.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from pathlib import Path

import pytest

from feinschliff.artifacts import completed_hash
from tests.reliability.conftest import trials
from tests.reliability.zygote import Zygote

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MAX_STEPS = 6
SETTINGS = [
    f"train.hyperparameters.max_steps={MAX_STEPS}",
    "train.hyperparameters.save_steps=1",
    "train.hyperparameters.max_length=128",
    "train.hyperparameters.batch_size=1",
    "train.lora.r=8",  # small checkpoints: a trial stays at seconds per step on 2 cores
    "train.lora.target_modules=[q_proj, v_proj]",
]
MARKER = ".complete"  # feinschliff.train.trl_backend.CKPT_MARKER


@pytest.fixture(scope="module")
def zygote():
    z = Zygote(["feinschliff.cli", "feinschliff.train.trl_backend", "trl", "peft", "datasets"])
    yield z
    z.close()


def _argv(data: Path, out: Path) -> list[str]:
    argv = ["train", str(ROOT / "recipes" / "demo-de.yaml"), "--data", str(data), "--out", str(out)]
    for s in SETTINGS:
        argv += ["--set", s]
    return argv


def _checkpoints(out: Path) -> dict[int, bool]:
    """step -> has its completeness marker."""
    found = {}
    for p in (out / "checkpoints").glob("checkpoint-*"):
        try:
            found[int(p.name.split("-")[1])] = (p / MARKER).exists()
        except (ValueError, FileNotFoundError):  # removed by the trainer's rotation meanwhile
            continue
    return found


def _kill_at(child, out: Path, mode: str, step: int, delay: float) -> None:
    """mode "save": while checkpoint-<step> exists without its marker (being written);
    mode "step": ``delay`` seconds after checkpoint-<step> is complete (0: after start)."""
    deadline = time.monotonic() + 300
    while child.alive() and time.monotonic() < deadline:
        ckpts = _checkpoints(out)
        if mode == "save" and (step in ckpts or max(ckpts, default=0) > step):
            break  # being written now (or, on a slow poll, just done): kill at once
        if mode == "step" and (step == 0 or ckpts.get(step)):
            time.sleep(delay)
            break
        time.sleep(0.002)
    child.kill()


def test_kill_9_during_training_resumes_from_last_complete_checkpoint(
    demo_model, demo_ingest, zygote, tmp_path, reliability
):
    n = trials(short=3, long=20)
    seed = int(os.environ.get("FEINSCHLIFF_RELIABILITY_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    resumed_ok = reached = mid_save = late = 0
    problems = []
    for i in range(n):
        t0 = time.monotonic()
        out = tmp_path / f"trial-{i}"
        mode = ("save", "step")[i % 2]
        step = rng.randint(1, MAX_STEPS - 1) if mode == "save" else rng.randint(0, MAX_STEPS - 1)
        delay = rng.uniform(0.0, 2.5)
        first = zygote.start(
            "tests.reliability.zygote:run_cli",
            [_argv(demo_ingest.dir, out)],
            tmp_path / f"trial-{i}-killed.log",
        )
        _kill_at(first, out, mode, step, delay)
        finished = first.returncode == 0  # the kill came after the end: nothing to resume
        late += finished
        ckpts = _checkpoints(out)
        expected = max((s for s, done in ckpts.items() if done), default=0)
        torn = [s for s, done in ckpts.items() if not done]
        mid_save += bool(torn)
        where = (
            f"trial {i} (seed {seed}, {mode} {step}+{delay:.2f}s, complete {expected}, torn {torn})"
        )
        if not finished and completed_hash(out) is not None:
            problems.append(f"{where}: killed run left a complete output")

        rerun = zygote.start(
            "tests.reliability.zygote:run_cli",
            [_argv(demo_ingest.dir, out)],
            tmp_path / f"trial-{i}-rerun.log",
        )
        rc = rerun.wait(timeout=600)
        if rc != 0:
            problems.append(f"{where}: rerun exit {rc}: {rerun.tail()}")
            continue
        print(f"trial {i}: {mode} {step}, complete {expected}, {time.monotonic() - t0:.0f} s")
        metrics = json.loads((out / "metrics.json").read_text())
        logged = [int(m) for m in re.findall(rf"step (\d+)/{MAX_STEPS} loss", rerun.tail(10**6))]
        want = f"checkpoint-{expected}" if expected else None
        first_step = logged[0] if logged else MAX_STEPS + 1  # nothing left to train
        if finished or (metrics["resumed_from"] == want and first_step == expected + 1):
            resumed_ok += 1
        else:
            problems.append(
                f"{where}: resumed from {metrics['resumed_from']} (first step {first_step}), "
                f"expected {want}"
            )
        state = json.loads(
            (out / "checkpoints" / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text()
        )
        curve = [e["step"] for e in metrics["loss_curve"]]
        if (
            metrics["global_step"] == MAX_STEPS == state["global_step"]
            and curve == list(range(1, MAX_STEPS + 1))
            and completed_hash(out)
            and (out / "adapter" / "adapter_model.safetensors").exists()
        ):
            reached += 1
        else:
            problems.append(f"{where}: global_step {metrics['global_step']}, curve {curve}")

    reliability(
        trials=n,
        figure=f"{resumed_ok}/{n} resumed from last complete checkpoint, {reached}/{n} reached "
        f"max_steps={MAX_STEPS} ({mid_save} killed mid-checkpoint-write, {late} finished before "
        f"the kill, seed {seed})",
    )
    assert not problems, "\n".join(problems)
    assert resumed_ok == reached == n
