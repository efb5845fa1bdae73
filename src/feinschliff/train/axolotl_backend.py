"""Axolotl backend: the same recipe as the TRL backend, trained by Axolotl 0.19.0 in its own venv.

Axolotl cannot share feinschliff's venv (its pins conflict, FACTS 6), so it runs as a subprocess
from the venv ``scripts/install_axolotl.sh`` builds (installed on first use). This module:

1. generates the Axolotl YAML from the typed recipe (``axolotl_config``: explicit code, the six
   CPU overrides without CUDA, our own refusal of keys Axolotl would silently drop);
2. validates it in the Axolotl venv: every key must be a field of Axolotl's pydantic schema, then
   ``validate_config``;
3. runs ``axolotl train cfg.yaml --launcher python`` with telemetry off, streaming its log lines,
   marking each checkpoint complete once a later one exists (or training finished), and resuming
   from the last complete checkpoint;
4. copies the PEFT adapter into ``out/adapter`` (the TRL backend's output contract).

Supported here: sft, dpo, orpo (kto is TRL-only).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from feinschliff.paths import project_root
from feinschliff.recipe import Recipe
from feinschliff.train.adapter_config import sort_adapter_config
from feinschliff.train.axolotl_config import AxolotlError, axolotl_rows, build_config
from feinschliff.train.peak_memory import wait_with_peak
from feinschliff.train.templates import CHAT_TEMPLATE_FILE

log = logging.getLogger(__name__)
CKPT_MARKER = ".complete"
# No telemetry or experiment tracking. The Hub settings (HF_HUB_OFFLINE, HF_TOKEN) are the
# caller's: forcing offline here failed every hub-id base model not already in the HF cache.
AXOLOTL_ENV = {
    "AXOLOTL_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}


# --------------------------------------------------------------------------- venv


def axolotl_venv(install: bool = True) -> Path:
    """The Axolotl venv keyed by its pins; built by scripts/install_axolotl.sh if missing."""
    script = project_root() / "scripts" / "install_axolotl.sh"
    path = Path(_run_script(script, "--print"))
    if (path / ".complete").exists():
        return path
    if not install:
        raise AxolotlError(f"no Axolotl venv at {path}: run {script} (~5 min, ~4.3 GB)")
    log.info("installing Axolotl into %s (first use: ~5 min, ~4.3 GB)", path)
    return Path(_run_script(script))


def _run_script(script: Path, *args: str) -> str:
    proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AxolotlError(f"{script.name} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


_VALIDATE = r"""
import json, sys
from axolotl.utils.config import validate_config
from axolotl.utils.dict import DictDefault
from axolotl.utils.schemas.config import AxolotlInputConfig
from axolotl.utils.schemas.datasets import DPODataset, SFTDataset

def names(model):
    out = set(model.model_fields)
    out |= {f.alias for f in model.model_fields.values() if f.alias}
    return out

cfg = json.load(open(sys.argv[1]))
unknown = sorted(set(cfg) - names(AxolotlInputConfig))
ds_model = DPODataset if cfg.get("rl") else SFTDataset
for section in ("datasets", "test_datasets"):
    for entry in cfg.get(section) or []:
        unknown += [section + "[]." + k for k in sorted(set(entry) - names(ds_model))]
if unknown:
    print(json.dumps({"unknown": unknown})); sys.exit(3)
validate_config(DictDefault(cfg))
print(json.dumps({"ok": True}))
"""


def validate_in_venv(venv: Path, cfg: dict[str, Any], work: Path) -> None:
    """Check ``cfg`` against the installed Axolotl schema; raise with its message otherwise."""
    path = work / "config.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", _VALIDATE, str(path)],
        capture_output=True,
        text=True,
        env=_env(),
    )
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode == 3:
        raise AxolotlError(f"Axolotl would ignore these keys: {json.loads(last)['unknown']}")
    if proc.returncode != 0:
        raise AxolotlError(f"Axolotl rejected the config:\n{proc.stderr[-3000:]}")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | AXOLOTL_ENV


# --------------------------------------------------------------------------- run


def last_complete_checkpoint(ckpt_dir: Path) -> Path | None:
    done = [p for p in ckpt_dir.glob("checkpoint-*") if (p / CKPT_MARKER).exists()]
    return max(done, key=_step, default=None)


def _step(path: Path) -> int:
    return int(path.name.split("-")[1])


def mark_finished_checkpoints(ckpt_dir: Path, *, all_done: bool) -> None:
    """HF saves checkpoints one after another: once a later one exists (or the run finished),
    the earlier ones are complete. The newest stays unmarked while it may still be written."""
    ckpts = sorted(ckpt_dir.glob("checkpoint-[0-9]*"), key=_step)
    for p in ckpts if all_done else ckpts[:-1]:
        if p.is_dir() and not (p / CKPT_MARKER).exists():
            (p / CKPT_MARKER).write_text(p.name.split("-")[1])


_LOSS = re.compile(r"['\"]loss['\"]:\s*['\"]?([0-9.eE+-]+)")


def train_axolotl(
    recipe: Recipe,
    model_path: str,
    files: dict[str, Path],
    out: Path,
    *,
    init_adapter: Path | None = None,
) -> dict[str, Any]:
    """Train with Axolotl and copy its adapter to ``out/adapter``; returns raw metrics."""
    import torch

    work = out / "axolotl"
    work.mkdir(parents=True, exist_ok=True)
    ax_files = {k: axolotl_rows(recipe, v, work / f"{k}.jsonl") for k, v in files.items()}
    ckpt_dir = out / "checkpoints"
    resume = last_complete_checkpoint(ckpt_dir)
    on_cpu = not torch.cuda.is_available()
    cfg = build_config(
        recipe, model_path, ax_files, out, on_cpu=on_cpu, resume=resume, init_adapter=init_adapter
    )
    venv = axolotl_venv()
    validate_in_venv(venv, cfg, work)
    cfg_path = work / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [str(venv / "bin" / "axolotl"), "train", str(cfg_path), "--launcher", "python"]
    start = time.perf_counter()
    # Restored by Axolotl on resume and counted on from there: not this run's work.
    tokens_before = checkpoint_tokens(resume) if resume is not None else 0
    if resume is not None and reached_max_steps(resume):
        # Killed after the final checkpoint was marked, before the stage finished: resumed,
        # transformers would train one more batch. Its adapter is the result.
        log.info("%s is the final checkpoint: finishing without training on", resume)
        tail: dict[str, Any] = {"losses": []}
    else:
        if resume is not None:
            log.info("resuming from %s", resume)
        tail = _stream(cmd, work / "train.log", ckpt_dir)
    wall = time.perf_counter() - start
    mark_finished_checkpoints(ckpt_dir, all_done=True)
    adapter = collect_adapter(ckpt_dir, out / "adapter")
    # Axolotl's RL trainers also write the full merged model next to the adapter: not needed.
    (ckpt_dir / "model.safetensors").unlink(missing_ok=True)
    state = _trainer_state(ckpt_dir)
    history = state.get("log_history", [])
    # Axolotl logs "tokens/total" with each loss: the cumulative token slots of the training
    # batches (labels.numel(): padding included, unlike the TRL backend's non-padding count).
    tokens = _last_logged_tokens(history)
    run_tokens = tokens - tokens_before
    if not history:
        log.warning("no trainer_state.json found; loss curve from the log lines only")
        history = [{"step": i + 1, "loss": v} for i, v in enumerate(tail["losses"])]
    return {
        "method": recipe.train.method,
        "backend": "axolotl",
        "global_step": state.get("global_step", len(history)),
        "resumed_from": resume.name if resume else None,
        "loss_curve": [{"step": e["step"], "loss": e["loss"]} for e in history if "loss" in e],
        "eval_curve": [
            {"step": e["step"], "loss": e["eval_loss"]} for e in history if "eval_loss" in e
        ],
        "eval_loss": final_eval_loss(history, state.get("global_step")),
        "train_rows": sum(1 for _ in ax_files["train"].open()),
        "eval_rows": sum(1 for _ in ax_files["eval"].open()) if "eval" in ax_files else 0,
        "trained_tokens": tokens or None,  # Axolotl logs no token counts for DPO/ORPO
        "wall_seconds": round(wall, 2),
        "tokens_per_second": round(run_tokens / wall, 2) if run_tokens > 0 and wall > 0 else None,
        "trainable_parameters": _adapter_parameters(adapter),
        "chat_template": cfg["chat_template"],
        "world_size": 1,
        "peak_gpu_memory_mb": None,
        "axolotl_config": str(cfg_path),
        "peak_rss_mb": tail.get("peak_rss_mb"),  # Axolotl's (wait4); None: nothing trained
    }


def _die_with(parent: int):
    """A preexec hook for the Axolotl child (Linux): SIGKILL it when the stage process dies.
    Otherwise a killed stage leaves Axolotl training on, orphaned, and the rerun's resume races
    it for the same checkpoint folder. ``--launcher python`` trains in this very process, so no
    grandchild escapes."""

    def hook() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the stage died before prctl took effect
            os._exit(1)

    return hook


def _stream(cmd: list[str], log_path: Path, ckpt_dir: Path) -> dict[str, Any]:
    """Run Axolotl, forward its progress to our log, mark checkpoints as they are superseded."""
    losses: list[float] = []
    lines: list[str] = []
    with log_path.open("w", encoding="utf-8") as logf:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
            preexec_fn=_die_with(os.getpid()) if sys.platform == "linux" else None,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            logf.write(line)
            lines = (lines + [line])[-40:]
            if m := _LOSS.search(line):
                losses.append(float(m.group(1)))
                log.info("axolotl: step %d loss %s", len(losses), m.group(1))
            if ckpt_dir.exists():
                mark_finished_checkpoints(ckpt_dir, all_done=False)
        code, peak_mb = wait_with_peak(proc)
    if code != 0:
        raise AxolotlError(
            f"axolotl train exited with {code} (log: {log_path}):\n{''.join(lines)[-3000:]}"
        )
    return {"losses": losses, "peak_rss_mb": round(peak_mb, 1)}


def collect_adapter(ckpt_dir: Path, dest: Path) -> Path:
    """Copy only the PEFT files and the chat template (DPO also writes a full
    model.safetensors we do not want)."""
    src = ckpt_dir
    if not (src / "adapter_config.json").exists():
        last = max(ckpt_dir.glob("checkpoint-[0-9]*"), key=_step, default=None)
        if last is None or not (last / "adapter_config.json").exists():
            raise AxolotlError(f"Axolotl wrote no PEFT adapter into {ckpt_dir}")
        src = last
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(src / name, dest / name)
    sort_adapter_config(dest)  # PEFT writes module sets in per-process order
    # Axolotl saves its tokenizer (and the template it trained with) into the output folder.
    template = next(
        (d / CHAT_TEMPLATE_FILE for d in (src, ckpt_dir) if (d / CHAT_TEMPLATE_FILE).exists()), None
    )
    if template is not None:
        shutil.copy2(template, dest / CHAT_TEMPLATE_FILE)
    cfg = json.loads((dest / "adapter_config.json").read_text())
    if cfg.get("use_dora") or cfg.get("bias", "none") != "none" or cfg.get("modules_to_save"):
        raise AxolotlError(f"Axolotl produced an adapter vLLM cannot serve: {dest}")
    return dest


def final_eval_loss(history: list[dict[str, Any]], global_step: int | None) -> float | None:
    """The eval loss logged at the last step; None when the run did not evaluate there (an
    earlier one, e.g. Axolotl's step-0 eval of the untrained adapter, is not the result)."""
    evals = [e for e in history if "eval_loss" in e]
    if evals and (global_step is None or evals[-1]["step"] >= global_step):
        return evals[-1]["eval_loss"]
    if evals:
        log.warning("no eval loss at the final step %s; metrics.json has none", global_step)
    return None


def reached_max_steps(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` was saved at the run's last step (its ``trainer_state.json``)."""
    state = _read_json(checkpoint / "trainer_state.json")
    return 0 < int(state.get("max_steps") or 0) <= int(state.get("global_step") or 0)


def checkpoint_tokens(checkpoint: Path) -> int:
    """The "tokens/total" count Axolotl restores when it resumes from ``checkpoint``: its
    ``tokens_state.json``, else the last count logged before it."""
    saved = _read_json(checkpoint / "tokens_state.json")
    if "total" in saved:
        return int(saved["total"])
    return _last_logged_tokens(_read_json(checkpoint / "trainer_state.json").get("log_history", []))


def _last_logged_tokens(history: list[dict[str, Any]]) -> int:
    return int(next((e["tokens/total"] for e in reversed(history) if "tokens/total" in e), 0))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _trainer_state(ckpt_dir: Path) -> dict[str, Any]:
    candidates = [ckpt_dir / "trainer_state.json"]
    candidates += sorted(
        ckpt_dir.glob("checkpoint-[0-9]*/trainer_state.json"), key=lambda p: -_step(p.parent)
    )
    for c in candidates:
        if c.exists():
            return json.loads(c.read_text())
    return {}


def _adapter_parameters(adapter: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        return sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
