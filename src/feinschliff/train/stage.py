"""The train stage: pick the backend, train, and write the adapter output contract.

``out/adapter/`` (PEFT: adapter_config.json + adapter_model.safetensors + README.md model
card), ``out/metrics.json`` (loss curve, tokens/s, peak memory, wall time, trained tokens) and
``out/loss.png``. A finished output made from the same inputs is reused, not retrained.
"""

from __future__ import annotations

import logging
import resource
import sys
from pathlib import Path
from typing import Any

from feinschliff import __version__
from feinschliff.artifacts import (
    AdapterRef,
    DatasetRef,
    input_key,
    mark_complete,
    prepare_out,
    reusable,
    write_json,
)
from feinschliff.models import resolve_model
from feinschliff.plots import plot_loss
from feinschliff.recipe import Recipe
from feinschliff.recipe_loader import section_hash

log = logging.getLogger(__name__)


class TrainError(RuntimeError):
    """Training cannot start (unsupported backend, empty data) or failed."""


def run_train(recipe: Recipe, data: DatasetRef, out: Path) -> AdapterRef:
    key = input_key(section_hash(recipe, "base_model", "train"), data.sha256, __version__)
    if digest := reusable(out, key):
        log.info("train: reusing finished adapter in %s", out)
        return AdapterRef(path=str(out), sha256=digest)
    if recipe.train.backend != "trl":
        raise TrainError(
            "train.backend 'axolotl' is accepted by the recipe schema but not implemented yet "
            "(tracked in the training issue); use backend: trl"
        )
    prepare_out(out, key)
    model_path = resolve_model(recipe.base_model.name)
    from feinschliff.train.trl_backend import train_trl

    metrics: dict[str, Any] = train_trl(recipe, model_path, data.dir, out)
    metrics["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    metrics["base_model"] = recipe.base_model.name
    metrics["base_model_path"] = model_path
    metrics["dataset_sha256"] = data.sha256
    write_json(out / "metrics.json", metrics)
    plot_loss(
        metrics["loss_curve"], out / "loss.png", title=f"{recipe.use_case}: {recipe.train.method}"
    )
    write_model_card(recipe, data, metrics, out / "adapter" / "README.md")
    digest = mark_complete(out, stage="train", key=key)
    return AdapterRef(path=str(out), sha256=digest)


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def write_model_card(recipe: Recipe, data: DatasetRef, metrics: dict[str, Any], path: Path) -> None:
    hp = recipe.train.hyperparameters
    lora = recipe.train.lora
    card = f"""---
base_model: {recipe.base_model.name}
library_name: peft
tags: [feinschliff, lora, {recipe.train.method}, {recipe.use_case}]
language: [de]
---

# {recipe.use_case} LoRA adapter ({recipe.train.method})

Trained by feinschliff {__version__} from production feedback.

| | |
|---|---|
| Base model | `{recipe.base_model.name}` |
| Method / backend | {recipe.train.method} / {recipe.train.backend} |
| LoRA | r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, targets={lora.target_modules} |
| Learning rate | {hp.learning_rate} ({hp.lr_scheduler}) |
| Steps | {metrics["global_step"]} (batch {hp.batch_size} x accumulation {hp.gradient_accumulation_steps}) |
| Max length | {hp.max_length} |
| Training rows | {metrics["train_rows"]} |
| Dataset sha256 | `{data.sha256}` |
| Final loss | {metrics["loss_curve"][-1]["loss"] if metrics["loss_curve"] else "n/a"} |

## Evaluation

Filled in by `feinschliff evaluate` (see the run's report.md).
"""
    path.write_text(card, encoding="utf-8")
