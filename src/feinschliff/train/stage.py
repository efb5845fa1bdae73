"""The train stage: check the plan, prepare rows, run a backend, write the output contract.

``out/adapter/`` (PEFT: adapter_config.json + adapter_model.safetensors + README.md model
card), ``out/metrics.json`` (loss curve, tokens/s, peak memory, wall time, trained tokens) and
``out/loss.png``. A finished output made from the same inputs is reused, not retrained; a killed
one resumes from its last complete checkpoint. Before anything is written, a recipe with a
target ``train.gpu`` is refused if its memory estimate does not fit that GPU, QLoRA where no
CUDA GPU exists, and a base model folder, LoRA targets or chat template the model does not
have (``train.checks``); so is an output folder inside the data or holding it. The output is
held for the whole training (``hold_train_out``): a second train on it fails at once, naming
the holder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from feinschliff import __version__
from feinschliff.artifacts import (
    AdapterRef,
    DatasetRef,
    OutputInUse,
    code_version,
    input_key,
    mark_complete,
    prepare_out,
    refuse_foreign_out,
    reusable,
    rows_sha256,
    write_json,
)
from feinschliff.pipeline import registry_root
from feinschliff.plots import plot_loss
from feinschliff.recipe import Recipe
from feinschliff.recipe_loader import section_hash
from feinschliff.registry import UNSET, RegistryError, manifest
from feinschliff.train import data as train_data
from feinschliff.train.allocator import expandable_segments
from feinschliff.train.checks import (
    DoesNotFit,
    RecipeRefused,
    TrainError,
    base_model_fingerprint,
    base_model_path,
    check_model_fits_recipe,
    refuse_out_overlap,
)
from feinschliff.train.peak_memory import own_peak_mb, reset_own_peak
from feinschliff.train.templates import CHAT_TEMPLATE_FILE
from feinschliff.train.warm_start import WarmStart, WarmStartError, find_warm_start

__all__ = [
    "DoesNotFit",
    "RecipeRefused",
    "TrainError",
    "cache_key",
    "nothing_new",
    "preflight",
    "run_train",
    "train_inputs",
]

log = logging.getLogger(__name__)


def cache_key(recipe: Recipe, data: DatasetRef, production: Any = UNSET) -> str:
    """What a finished training depends on: its recipe sections, the base model's content
    (``checks.base_model_fingerprint``), the rows, the adapter a warm start continues
    (``production`` as in ``run_train``) and the code."""
    return _key(recipe, rows_sha256(data), _warm_start(recipe, production))


def _key(recipe: Recipe, rows: str, warm: WarmStart | None) -> str:
    return input_key(
        section_hash(recipe, "base_model", "train"),
        base_model_fingerprint(recipe),  # the same name may hold another model later
        rows,
        warm.adapter_sha256 if warm else None,
        code_version(),
    )


def train_inputs(recipe: Recipe) -> str:
    """The hash of what a training learns from besides its rows and the adapter it continues:
    the ``base_model`` and ``train`` sections and the base model's content (``_key``'s other
    parts but the code version). Recorded in ``metrics.json`` for ``nothing_new``."""
    return input_key(section_hash(recipe, "base_model", "train"), base_model_fingerprint(recipe))


def nothing_new(recipe: Recipe, data: DatasetRef, production: str | None) -> bool:
    """Whether a warm start (``init_from: production``) from ``production`` has nothing new to
    learn: production itself was trained (warm or not) on these rows (the new rows' hash, as
    the cache key; replayed rows come from production's own snapshot) with the same
    ``train_inputs``. Its key names the production it continues, so without this every
    promotion was followed by another pass over the same rows. Not compared: the code version
    (an upgrade alone would add such a pass too). Versions registered without the record:
    False (trained as before)."""
    if recipe.train.init_from != "production" or production is None:
        return False
    try:
        recorded = manifest(registry_root(recipe), recipe.use_case, production).get("train") or {}
    except RegistryError:  # unreadable: the warm start itself says what is wrong
        return False
    inputs = recorded.get("train_inputs_sha256")
    return inputs is not None and (inputs, recorded.get("dataset_rows_sha256")) == (
        train_inputs(recipe),
        rows_sha256(data),
    )


def _warm_start(recipe: Recipe, production: Any) -> WarmStart | None:
    try:
        return find_warm_start(recipe, production)
    except WarmStartError as exc:
        raise TrainError(str(exc)) from exc


def run_train(
    recipe: Recipe, data: DatasetRef, out: Path, *, production: Any = UNSET
) -> AdapterRef:
    """Train (or reuse a finished training of the same inputs). ``production``: the version a
    warm start continues, as the caller recorded it (default: the registry's production now).

    Raises:
        TrainError: also when another run holds ``out`` (``hold_train_out``), when no row fits
            max_length, when the trained adapter holds NaN (``trl_rows``), when the disk fills
            while a checkpoint or the adapter is saved, and when the rows cannot be kept for
            replay under ``FEINSCHLIFF_HOME`` (before training).
        OutputInUse: ``out`` is no usable folder, or the lock beside it cannot be created.
    """
    refuse_out_overlap(out, data)
    refuse_foreign_out(out, "train")  # before the base model is provisioned (minutes)
    warm = _warm_start(recipe, production)
    rows = rows_sha256(data)
    key = _key(recipe, rows, warm)
    if digest := reusable(out, key):
        log.info("train: reusing finished adapter in %s", out)
        return AdapterRef(path=str(out), sha256=digest)
    preflight(recipe)
    model_path = base_model_path(recipe)
    check_model_fits_recipe(recipe, model_path)
    with hold_train_out(out):  # after the refusals: a refused run writes nothing, no lock either
        if digest := reusable(out, key):  # the run that held it finished these inputs
            log.info("train: reusing finished adapter in %s", out)
            return AdapterRef(path=str(out), sha256=digest)
        return _train(recipe, data, out, model_path, warm, rows, key)


def _train(
    recipe: Recipe,
    data: DatasetRef,
    out: Path,
    model_path: str,
    warm: WarmStart | None,
    rows: str,
    key: str,
) -> AdapterRef:
    prepare_out(out, key, "train")
    spec = recipe.train
    try:
        replay = train_data.replay_rows(spec.method, warm.dataset_sha256) if warm else []
        prepared = train_data.prepare_rows(
            spec.method,
            data.dir,
            eval_fraction=spec.hyperparameters.eval_fraction,
            seed=spec.hyperparameters.seed,
            replay=replay,
            replay_fraction=spec.replay_fraction,
        )
        # Kept for a later warm start's replay; the new rows only, not what was replayed into
        # them. Keyed by the rows' hash (the registry's lineage records it): a later ingest
        # with the same rows reuses this training, and its lineage finds these rows.
        # With provenance: a later candidate's evaluate scans its replayed rows for poisoning.
        # Before training (it depends on the data only, after the replay above was read): a
        # full or read-only FEINSCHLIFF_HOME fails now, not after the whole training.
        snapshot = train_data.method_rows(spec.method, data.dir, provenance=True)
        train_data.snapshot_rows(spec.method, snapshot, rows)
    except train_data.DataError as exc:  # also SnapshotError, naming the file
        raise TrainError(str(exc)) from exc
    files = train_data.write_rows(prepared, out / "data")
    reset_own_peak()  # this run's peak, not an earlier training's in a long-lived worker
    with expandable_segments(on_cuda=_cuda_available()):
        metrics = _run_backend(recipe, model_path, files, out, warm)
    if "peak_rss_mb" not in metrics:  # trained in this process (a child's comes with it)
        metrics["peak_rss_mb"] = round(own_peak_mb(), 1)
    metrics |= {
        "base_model": recipe.base_model.name,
        "base_model_path": model_path,
        "dataset_sha256": data.sha256,
        # the rows' hash (``rows_sha256``): this training is reused for other outputs with
        # these rows (a live pull that found nothing new); evaluate accepts them by it
        "dataset_rows_sha256": rows,
        "train_inputs_sha256": train_inputs(recipe),  # with the rows: ``nothing_new``
        "new_rows": prepared["new_rows"],
        "replayed_rows": prepared["replayed_rows"],
        "init_from": f"{recipe.use_case}/{warm.version}" if warm else "base",
    }
    write_json(out / "metrics.json", metrics)
    plot_loss(metrics["loss_curve"], out / "loss.png", title=f"{recipe.use_case}: {spec.method}")
    write_model_card(recipe, data, metrics, out / "adapter" / "README.md")
    digest = mark_complete(out, stage="train", key=key)
    return AdapterRef(path=str(out), sha256=digest)


@contextmanager
def hold_train_out(out: Path) -> Iterator[None]:
    """Hold ``out`` for the whole training (``generate.outlock``'s lock, beside it): a second
    train on it would wipe or share the running one's checkpoints. Another holder: a
    ``TrainError`` at once, naming it. The train-stage flow holds the same lock itself before
    it calls ``run_train``: a lock this process holds already is not waited for. A lock the OS
    cannot create (a read-only parent folder) is a wrong output path, ``OutputInUse`` (exit 2),
    as other stages report an output folder they cannot create."""
    from feinschliff.generate.outlock import OutputBusy, OutputLockError, hold_output

    with ExitStack() as stack:
        try:
            stack.enter_context(hold_output(out))
        except OutputLockError as exc:
            raise OutputInUse(f"{exc}: choose another output folder") from None
        except OutputBusy as exc:
            if not _held_here(out):
                raise TrainError(str(exc)) from None
        yield


def _held_here(out: Path) -> bool:
    """Whether this process holds ``out``'s lock (the one ``hold_output`` takes beside it)."""
    from feinschliff.pipeline import held_here

    target = Path(out).resolve()
    return held_here(target.parent / f".{target.name}.lock")


def _axolotl_venv(recipe: Recipe) -> Path | None:
    """The venv an Axolotl training runs in, if built (else it is built, with its pins, first)."""
    if recipe.train.backend != "axolotl":
        return None
    from feinschliff.train.axolotl_backend import AxolotlError, axolotl_venv

    try:
        return axolotl_venv(install=False)
    except AxolotlError:  # built on first use: bitsandbytes is then the pins' business
        return None


def preflight(recipe: Recipe) -> None:
    """Refuse, before loading anything, a training that cannot run as configured."""
    from feinschliff.estimate import EstimateError, check_training_fits

    if recipe.train.qlora:
        from feinschliff.train.trl_backend import QLoRAUnavailable, check_qlora_available

        try:
            check_qlora_available(_axolotl_venv(recipe))
        except QLoRAUnavailable as exc:
            raise TrainError(str(exc)) from exc
    try:
        check_training_fits(recipe)
    except EstimateError as exc:
        raise DoesNotFit(str(exc)) from exc


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _run_backend(
    recipe: Recipe, model_path: str, files: dict[str, Path], out: Path, warm: WarmStart | None
) -> dict[str, Any]:
    spec = recipe.train
    init = warm.adapter_dir if warm else None
    if spec.backend == "axolotl":
        from feinschliff.train.axolotl_backend import AxolotlError, train_axolotl

        try:
            return train_axolotl(recipe, model_path, files, out, init_adapter=init)
        except AxolotlError as exc:
            raise TrainError(str(exc)) from exc
    if spec.launcher == "accelerate" and spec.num_processes > 1:
        from feinschliff.train.launch import LaunchError, launch_accelerate

        try:
            return launch_accelerate(recipe, model_path, files, out, init_adapter=init)
        except LaunchError as exc:
            raise TrainError(str(exc)) from exc
    from feinschliff.train.templates import TemplateError
    from feinschliff.train.trl_backend import TrainerSetupError, train_trl
    from feinschliff.train.trl_rows import TrainingFailed

    try:
        metrics = train_trl(recipe, model_path, files, out, init_adapter=init)
    except (TemplateError, TrainerSetupError, TrainingFailed) as exc:
        raise TrainError(str(exc)) from exc
    metrics.pop("is_main_process", None)
    return metrics


def write_model_card(recipe: Recipe, data: DatasetRef, metrics: dict[str, Any], path: Path) -> None:
    hp = recipe.train.hyperparameters
    lora = recipe.train.lora
    final = metrics["loss_curve"][-1]["loss"] if metrics["loss_curve"] else "n/a"
    # batch_size is per process: under accelerate launch each step takes world_size of them
    world = metrics.get("world_size") or 1
    processes = f" x {world} processes" if world > 1 else ""
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
| Initialised from | {metrics.get("init_from", "base")} |
| LoRA | r={lora.r}, alpha={lora.alpha}, dropout={_dropout_note(recipe)}, targets={lora.target_modules}{", QLoRA 4-bit" if recipe.train.qlora else ""} |
| Learning rate | {hp.learning_rate} ({hp.lr_scheduler}) |
| Steps | {metrics["global_step"]} (batch {hp.batch_size} x accumulation {hp.gradient_accumulation_steps}{processes}) |
| Max length | {hp.max_length} |
| Training rows | {_rows_note(metrics)} |
| Dataset sha256 | `{data.sha256}` |
| Final loss | {final} |
| Eval loss | {metrics.get("eval_loss") if metrics.get("eval_loss") is not None else "n/a"} |
| Chat template | {_template_note(recipe, path.parent)} |

## Evaluation

Filled in by `feinschliff evaluate` (see the run's report.md).
"""
    path.write_text(card, encoding="utf-8")


def _rows_note(metrics: dict[str, Any]) -> str:
    """The rows trained, and those max_length dropped or left without an answer token."""
    note = f"{metrics['train_rows']} ({metrics.get('replayed_rows', 0)} replayed"
    if dropped := metrics.get("dropped_train_rows"):
        note += f"; {dropped} more dropped: their prompt fills max length"
    if past := metrics.get("rows_answer_past_max_length"):
        note += f"; {past} of them train on no answer token: it starts past max length"
    return note + ")"


def _dropout_note(recipe: Recipe) -> str:
    """The LoRA dropout training applied: TRL's DPO, ORPO and KTO trainers (also under Axolotl)
    set every dropout to 0 (``disable_dropout``, on by default), so the policy's and the
    reference's log-probabilities are not noise; adapter_config.json still records the
    recipe's value."""
    dropout = recipe.train.lora.dropout
    if recipe.train.method == "sft" or not dropout:
        return str(dropout)
    return (
        f"{dropout} in adapter_config.json, 0 in training ({recipe.train.method} disables dropout)"
    )


def _template_note(recipe: Recipe, adapter_dir: Path) -> str:
    """Which template prompts must be rendered with; chatml is not the base model's own."""
    saved = (adapter_dir / CHAT_TEMPLATE_FILE).exists()
    where = f"`{CHAT_TEMPLATE_FILE}` in this folder" if saved else "not saved"
    if recipe.train.chat_template == "chatml":
        return f"ChatML, not the base model's own: render prompts with {where}"
    return f"the base model's own ({where})"
