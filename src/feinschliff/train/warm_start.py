"""Warm start: continue training the adapter the registry aliases ``production``.

``train.init_from: production`` loads that version's PEFT adapter as the trainable starting
point, and ``train.replay_fraction`` mixes in rows of the data it was trained on (kept by
``train.data.snapshot_rows`` under the dataset hash its registry manifest records). Without a
production version yet (the first run of a use case) training starts from a fresh LoRA.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feinschliff.pipeline import registry_root
from feinschliff.recipe import Recipe
from feinschliff.registry import UNSET, production_adapter, version_adapter

log = logging.getLogger(__name__)


class WarmStartError(ValueError):
    """The production adapter cannot be continued with this recipe's LoRA settings."""


@dataclass(frozen=True)
class WarmStart:
    version: str
    adapter_dir: Path
    adapter_sha256: str
    dataset_sha256: str | None


def find_warm_start(recipe: Recipe, production: Any = UNSET) -> WarmStart | None:
    """The production adapter to continue from, or None (init_from: base, or none yet).

    ``production``: the production version to continue (None: there is none), as a flow run
    recorded it when it started; by default the registry's production now. A rerun after a
    crash after promotion must not continue from the candidate it promoted itself.
    """
    if recipe.train.init_from != "production":
        return None
    root = registry_root(recipe)
    if production is UNSET:
        ref = production_adapter(root, recipe.use_case)
    else:
        ref = None if production is None else version_adapter(root, recipe.use_case, production)
    if ref is None:
        log.warning(
            "init_from: production, but %s has no production adapter yet: training a fresh LoRA",
            recipe.use_case,
        )
        return None
    manifest = json.loads((ref.dir / "manifest.json").read_text(encoding="utf-8"))
    dataset = manifest.get("dataset") or {}
    adapter_dir = ref.dir / "adapter"
    check_same_base(recipe, manifest.get("base_model") or {}, ref.dir.name)
    check_compatible(recipe, json.loads((adapter_dir / "adapter_config.json").read_text()))
    start = WarmStart(
        version=manifest.get("version", ref.dir.name),
        adapter_dir=adapter_dir,
        adapter_sha256=manifest.get("adapter_sha256", ref.sha256),
        # the rows' hash keys the snapshot; versions registered before it existed: the output's
        dataset_sha256=dataset.get("rows_sha256") or dataset.get("sha256"),
    )
    log.info("warm start from %s:production = %s", recipe.use_case, start.version)
    return start


def check_same_base(recipe: Recipe, recorded: dict, version: str) -> None:
    """The production adapter must have been trained on the recipe's base model: after a base
    model change, continuing it would fail on tensor shapes or, worse, quietly carry weights
    learnt on another model. ``recorded``: the registry manifest's ``base_model`` (versions
    registered without one are not checked). The same model may be named differently (an
    alias, its local folder, an HF id and a copy named like it)."""
    from feinschliff.models import ModelFetchError, resolve_model

    name, mine = recorded.get("name"), recipe.base_model.name
    if not name:
        return
    from feinschliff.serving.preflight import same_model_name

    # the registry's rule: two folders here must be the same one, else the same last name
    same = same_model_name(name, mine)
    if not same and recorded.get("path"):
        try:
            same = (
                Path(resolve_model(mine, fetch=False)).resolve() == Path(recorded["path"]).resolve()
            )
        except ModelFetchError:
            same = False
    revision = recorded.get("revision")
    if same and revision and recipe.base_model.revision and revision != recipe.base_model.revision:
        same = False
        name = f"{name}@{revision}"
        mine = f"{mine}@{recipe.base_model.revision}"
    if not same:
        raise WarmStartError(
            f"init_from: production continues {recipe.use_case}/{version}, which was trained on "
            f"base model {name}; the recipe trains {mine}. Use init_from: base for the first "
            "adapter on the new base model."
        )


def check_compatible(recipe: Recipe, adapter_config: dict) -> None:
    """The recipe's LoRA must describe the adapter being continued: PEFT loads the production
    adapter with its own config (rank, alpha, dropout, target modules), so a recipe field that
    differs would be silently ignored. ``target_modules: all-linear`` is compared as PEFT
    expands it: every linear layer of the base model but the output head."""
    lora = recipe.train.lora
    problems = []
    if adapter_config.get("r") != lora.r:
        problems.append(f"rank {adapter_config.get('r')} vs train.lora.r={lora.r}")
    if adapter_config.get("lora_alpha") != lora.alpha:
        problems.append(
            f"alpha {adapter_config.get('lora_alpha')} vs train.lora.alpha={lora.alpha}"
        )
    dropout = float(adapter_config.get("lora_dropout") or 0.0)
    if not math.isclose(dropout, lora.dropout, abs_tol=1e-9):
        problems.append(f"dropout {dropout} vs train.lora.dropout={lora.dropout}")
    have = adapter_config.get("target_modules")
    if isinstance(have, str):  # a pattern PEFT matched against the model: kept only if unchanged
        if have != lora.target_modules:
            problems.append(
                f"target modules {have!r} vs train.lora.target_modules={lora.target_modules!r}"
            )
    else:
        want = lora.target_modules
        wanted = all_linear_modules(recipe) if want == "all-linear" else set(want)
        if _short_names(have or []) != _short_names(wanted):
            shown = (
                f"all-linear = {sorted(_short_names(wanted))}"
                if want == "all-linear"
                else sorted(wanted)
            )
            problems.append(
                f"target modules {sorted(_short_names(have or []))} vs "
                f"train.lora.target_modules={shown}"
            )
    if problems:
        raise WarmStartError(
            "init_from: production continues the production adapter, which differs from the "
            f"recipe's LoRA ({'; '.join(problems)}). Match the recipe to it, or use init_from: base."
        )


def _short_names(modules) -> set[str]:
    """Module names as PEFT matches them (by their last part): it saves all-linear as the set
    of those names, or as full module paths when the model has few layers."""
    return {m.rsplit(".", 1)[-1] for m in modules}


def all_linear_modules(recipe: Recipe) -> set[str]:
    """What PEFT's ``target_modules="all-linear"`` targets in the recipe's base model (built on
    the meta device from its config: no weights are loaded)."""
    from feinschliff.models import resolve_model

    return _all_linear(resolve_model(recipe.base_model.name), recipe.base_model.revision)


@functools.lru_cache(maxsize=8)
def _all_linear(model_path: str, revision: str | None) -> frozenset[str]:
    from peft import LoraConfig
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

    lora = _maybe_include_all_linear_layers(
        LoraConfig(target_modules="all-linear", task_type="CAUSAL_LM"),
        _meta_model(model_path, revision),
    )
    return frozenset(lora.target_modules)


@functools.lru_cache(maxsize=8)
def adaptable_modules(model_path: str, revision: str | None) -> frozenset[str]:
    """The dotted names of the base model's modules that LoRA can adapt (linear, embedding and
    convolution layers: PEFT refuses others), built on the meta device like ``_all_linear``."""
    import torch
    from transformers.pytorch_utils import Conv1D

    nn = torch.nn
    kinds = (
        nn.Linear,
        nn.Embedding,
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
        nn.MultiheadAttention,
        Conv1D,
    )
    model = _meta_model(model_path, revision)
    return frozenset(name for name, mod in model.named_modules() if isinstance(mod, kinds))


def _meta_model(model_path: str, revision: str | None):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path, revision=revision)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
