"""What the train stage checks before it writes anything, and what its cache key adds.

A recipe that cannot train as written (a base model folder that is not there, a LoRA target
the model does not have, a model without a chat template under ``chat_template: model``) is
refused here, before ``prepare_out`` and before minutes of data preparation and model loading:
``RecipeRefused``, an argument error (exit 2) like a too small ``train.gpu``. These checks run
where the training runs (``run_train``), not in ``validate``: a recipe may name a folder that
exists only on the GPU pool that trains it.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

from feinschliff.recipe import Recipe
from feinschliff.specs.common import is_local_path

log = logging.getLogger(__name__)


class TrainError(RuntimeError):
    """Training cannot start (no GPU for QLoRA, too little memory, empty data) or failed."""


class RecipeRefused(TrainError):
    """The recipe cannot train as written (exit 2): fixed in the recipe, not by a rerun."""


class DoesNotFit(RecipeRefused):
    """The recipe's ``train.gpu`` is too small for the memory estimate: a recipe problem."""


# --------------------------------------------------------------------------- cache key


def base_model_fingerprint(recipe: Recipe) -> dict | str | None:
    """What identifies the base model's content beyond its name, for the train and evaluate
    cache keys: ``models.model_fingerprint`` with mtimes (an alias's pin, a local folder's
    config hash and weight and tokenizer files; a folder replaced by another model must not
    reuse an adapter trained on the old one), ``"missing"`` for a folder that is not there. A
    hub id: None, its ``base_model.revision`` is in the recipe section's hash already."""
    from feinschliff.models import model_fingerprint

    name = recipe.base_model.name
    fingerprint = model_fingerprint(name)
    if fingerprint is None and is_local_path(name):
        return "missing"  # not None: these keys always told it apart from a hub id
    return fingerprint


# --------------------------------------------------------------------------- early checks


def refuse_out_overlap(out: Path, data) -> None:
    """``--out`` inside ``--data`` (or the other way round) would change the rows' content
    hash and mark the ingest output incomplete: refused before anything is written."""
    from feinschliff.evaluate.stage import refuse_overlap

    refuse_overlap(out, adapter=None, data=data)


def refuse_missing_base_model(recipe: Recipe) -> None:
    """Refuse a ``base_model.name`` written as a path with no folder there. For wherever the
    training runs: `run` (which trains here) and ``run_train``, not `validate` (a recipe may
    name a folder that only the GPU pool training it has).

    Raises:
        RecipeRefused: naming the recipe path and the folder looked for.
    """
    name = recipe.base_model.name
    folder = Path(name).expanduser()
    if is_local_path(name) and not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise RecipeRefused(
            f"base_model.name: {name} {what} here (a local model folder: relative paths are "
            "relative to the recipe file)"
        )


def base_model_path(recipe: Recipe) -> str:
    """The base model's folder (an alias is provisioned), or its hub id; see
    ``refuse_missing_base_model``."""
    from feinschliff.models import resolve_model

    refuse_missing_base_model(recipe)
    return resolve_model(recipe.base_model.name)


def check_model_fits_recipe(recipe: Recipe, model_path: str) -> None:
    """The LoRA targets and the chat template the recipe asks for exist in the model."""
    _check_target_modules(recipe, model_path)
    _check_chat_template(recipe, model_path)


def _check_target_modules(recipe: Recipe, model_path: str) -> None:
    # PEFT adapts the modules a name matches and silently ignores a name matching none:
    # [q_proj, v_projj] trained q_proj alone. Matched as PEFT does: the whole dotted name,
    # or its last parts.
    wanted = recipe.train.lora.target_modules
    if wanted == "all-linear":
        return
    _refuse_output_layer([name for name in wanted if name.rsplit(".", 1)[-1] == "lm_head"])
    from feinschliff.train.warm_start import adaptable_modules, all_linear_modules

    try:
        modules = adaptable_modules(model_path, recipe.base_model.revision)
        # PEFT gives full paths for models with few layers: the names a recipe writes
        linear = sorted({m.rsplit(".", 1)[-1] for m in all_linear_modules(recipe)})
    except Exception as exc:  # noqa: BLE001 - no config here (offline hub id, custom code)
        log.warning("train.lora.target_modules not checked: %s: %s", type(exc).__name__, exc)
        return
    unknown = [
        name for name in wanted if not any(m == name or m.endswith("." + name) for m in modules)
    ]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, linear, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise RecipeRefused(
        f"train.lora.target_modules: {', '.join(hints)}: {recipe.base_model.name} has no "
        f"layer of that name that LoRA can adapt; its linear layers: {', '.join(linear)} "
        "(or use all-linear)"
    )


def _refuse_output_layer(names: list[str]) -> None:
    # TRL computes the log-probabilities from lm_head.weight directly, so a LoRA there would
    # never train: its trainers refuse it, but only once the model is loaded.
    if names:
        raise RecipeRefused(
            f"train.lora.target_modules: {', '.join(map(repr, names))} is the output layer "
            "(lm_head): TRL trains no LoRA there (it computes the log-probabilities from "
            "lm_head.weight directly); remove it from target_modules"
        )


def _check_chat_template(recipe: Recipe, model_path: str) -> None:
    if recipe.train.chat_template != "model":
        return
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path, revision=recipe.base_model.revision)
    except Exception as exc:  # noqa: BLE001 - the backend reports a tokenizer it cannot load
        log.warning("train.chat_template not checked: %s: %s", type(exc).__name__, exc)
        return
    if not tokenizer.chat_template:
        raise RecipeRefused(
            f"train.chat_template: model, but {recipe.base_model.name} has no chat template: "
            "set train.chat_template: chatml"
        )
