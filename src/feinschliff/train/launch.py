"""Multi-process training: ``train.launcher: accelerate`` runs the TRL backend under
``accelerate launch`` with a config from ``configs/accelerate/`` (ddp, fsdp, deepspeed-zero3).

The parent (the train stage) writes a job file and starts ``accelerate launch ... -m
feinschliff.train.launch --job JOB`` as a subprocess, so the stage process stays light and a
failure in one rank cannot take the flow down. Every rank runs ``train_trl`` on the same rows;
the main process saves the adapter and writes ``backend-metrics.json`` for the stage. Without
CUDA the ranks talk over gloo on CPU (how the DDP path is tested here). A killed stage takes
the launcher with it, and the launcher its ranks (``die_with_launcher``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from feinschliff.paths import project_root
from feinschliff.recipe import Recipe
from feinschliff.train.axolotl_backend import _die_with
from feinschliff.train.peak_memory import wait_with_peak

log = logging.getLogger(__name__)
CONFIGS = {"ddp": "ddp.yaml", "fsdp": "fsdp.yaml", "deepspeed-zero3": "deepspeed_zero3.yaml"}
STAGE_PID = "FEINSCHLIFF_STAGE_PID"  # the stage process that started `accelerate launch`


class LaunchError(RuntimeError):
    """accelerate launch failed, or a rank produced no metrics."""


def accelerate_config(name: str) -> Path:
    return project_root() / "configs" / "accelerate" / CONFIGS[name]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(recipe: Recipe, job: Path, *, cuda: bool) -> list[str]:
    spec = recipe.train
    precision = {"bfloat16": "bf16", "float16": "fp16"}.get(recipe.base_model.dtype, "no")
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    cmd += ["--config_file", str(accelerate_config(spec.accelerate_config))]
    cmd += ["--num_processes", str(spec.num_processes), "--num_machines", "1"]
    cmd += ["--main_process_port", str(_free_port())]
    cmd += ["--mixed_precision", precision if cuda else "no"]
    return [*cmd, "-m", "feinschliff.train.launch", "--job", str(job)]


def launch_accelerate(
    recipe: Recipe,
    model_path: str,
    files: dict[str, Path],
    out: Path,
    *,
    init_adapter: Path | None = None,
) -> dict[str, Any]:
    """Train with ``num_processes`` ranks; returns the main rank's metrics."""
    import torch

    job = out / "launch-job.json"
    job.write_text(
        json.dumps(
            {
                "recipe": recipe.model_dump(mode="json"),
                "model_path": model_path,
                "files": {k: str(v) for k, v in files.items()},
                "out": str(out),
                "init_adapter": str(init_adapter) if init_adapter else None,
            }
        )
    )
    result = out / "backend-metrics.json"
    result.unlink(missing_ok=True)
    cmd = launch_command(recipe, job, cuda=torch.cuda.is_available())
    log.info("launching %d processes: %s", recipe.train.num_processes, " ".join(cmd))
    proc = subprocess.Popen(
        cmd,
        env=os.environ | {STAGE_PID: str(os.getpid())},
        stdout=sys.stderr,
        stderr=subprocess.STDOUT,
        # a killed stage must not leave the launcher training on (its rerun would resume into
        # the same checkpoint folder while the orphan still writes there)
        preexec_fn=_die_with(os.getpid()) if sys.platform == "linux" else None,
    )
    code, peak_mb = wait_with_peak(proc)  # the ranks' peak: the launcher waits for them
    if code != 0 or not result.exists():
        raise LaunchError(f"accelerate launch failed with exit code {code}")
    metrics = json.loads(result.read_text())
    metrics["peak_rss_mb"] = round(peak_mb, 1)
    metrics["launcher"] = f"accelerate/{recipe.train.accelerate_config}"
    return metrics


def die_with_launcher() -> None:
    """This rank gets SIGKILL when ``accelerate launch`` dies (Linux). torch's elastic agent
    starts each rank in a session of its own and can do nothing when it is SIGKILLed itself
    (which a killed stage does to it, ``_die_with``): the ranks trained on as orphans, racing
    the stage's rerun for the checkpoint folder. A rank whose launcher (or stage) was gone
    before this took effect exits at once."""
    if sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    stage = os.environ.get(STAGE_PID)
    if stage and _parent_of(os.getppid()) != int(stage):
        os._exit(1)


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state


def main(argv: list[str] | None = None) -> None:
    """One rank: rebuild the typed recipe from the job file and train."""
    parser = argparse.ArgumentParser(description="feinschliff training rank (accelerate launch)")
    parser.add_argument("--job", required=True, type=Path)
    args = parser.parse_args(argv)
    die_with_launcher()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    job = json.loads(args.job.read_text())
    from feinschliff.train.trl_backend import train_trl

    recipe = Recipe.model_validate(job["recipe"])
    out = Path(job["out"])
    metrics = train_trl(
        recipe,
        job["model_path"],
        {k: Path(v) for k, v in job["files"].items()},
        out,
        init_adapter=Path(job["init_adapter"]) if job["init_adapter"] else None,
    )
    if metrics.pop("is_main_process", True):
        (out / "backend-metrics.json").write_text(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
