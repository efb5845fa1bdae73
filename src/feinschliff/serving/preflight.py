"""Preflight: refuse an adapter before it reaches the registry or any server.

vLLM validates an adapter only when it is loaded, answers a bad one with a 500, and does not
catch every base-model mismatch (an adapter with *smaller* shapes than the model was accepted;
shared FACTS section 5). So every check vLLM applies to ``adapter_config.json`` (FACTS 10.3.4)
runs here first, plus what vLLM does not check:

- files (:mod:`~feinschliff.serving.adapter_files`): config and safetensors weights present; no
  pickle weights, escaping/dangling/looping symlinks, FIFOs, oversized files; a safetensors
  header the loader would accept (offsets tile the file, dtype sizes match);
- config types vLLM's parser assumes (a config that crashes it is as bad as one it refuses);
- base model: ``base_model_name_or_path`` names the expected model, and every LoRA tensor's shape
  fits the base model's weight of the same module, with the rank the config declares (shapes
  from safetensors headers only, so this takes milliseconds even for an 8B model);
- LoRA on ``embed_tokens``/``lm_head`` only for architectures whose vLLM model class loads it;
- values: float dtypes, no NaN/inf (a diverged run saves a well-formed file vLLM would serve).

All problems are collected and raised together in one :class:`PreflightError`.

This module runs the checks (:func:`preflight`) and re-exports every name of the modules that
hold them, so ``feinschliff.serving.preflight.<name>`` keeps working: file and safetensors checks
in :mod:`~feinschliff.serving.adapter_files`, config checks (and :class:`PreflightError`) in
:mod:`~feinschliff.serving.adapter_config`, tensor shapes and embedding LoRA in
:mod:`~feinschliff.serving.adapter_tensors`, the base model (:class:`BaseTarget`, name matching,
the servers' ``--model``) in :mod:`~feinschliff.serving.base_model`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from feinschliff.serving.adapter_config import (  # noqa: F401 - re-exported names
    ALLOWED_MODULES_TO_SAVE,
    REJECTED_INIT,
    PreflightError,
    check_config,
    max_rank,
    read_config,
    target_list,
)
from feinschliff.serving.adapter_files import (  # noqa: F401 - re-exported names
    CONFIG,
    MAX_CONFIG_BYTES,
    PICKLE_SUFFIXES,
    WEIGHTS,
    base_architectures,
    base_model_shapes,
    check_dtypes_and_values,
    check_files,
    read_index,
    read_safetensors_header,
)
from feinschliff.serving.adapter_tensors import (  # noqa: F401 - re-exported names
    EMBEDDING_LORA,
    EMBEDDING_MODULES,
    check_embedding_lora,
    check_tensors,
)
from feinschliff.serving.base_model import (  # noqa: F401 - re-exported names
    BaseTarget,
    base_names,
    base_target,
    check_base_name,
    check_recipe_served_model,
    check_served_model,
    same_model_name,
)

SAFE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass
class PreflightReport:
    adapter: Path
    rank: int
    target_modules: list[str]
    tensors: int
    base_model: str
    checks: list[str] = field(default_factory=list)


def check_name(name: str, what: str = "name") -> str:
    """A use case / adapter name that is safe as a path component and a served model name."""
    if not SAFE_NAME_RE.match(name or ""):
        raise PreflightError(
            name, [f"{what} {name!r} is not lowercase letters, digits and dashes (max 63)"]
        )
    return name


def preflight(adapter_dir: Path, target: BaseTarget) -> PreflightReport:
    """Run every check; return a report or raise :class:`PreflightError` listing all problems."""
    adapter_dir = Path(adapter_dir)
    problems = check_files(adapter_dir)
    if problems:  # without trustworthy files the other checks would only add noise
        raise PreflightError(adapter_dir, problems)
    config = read_config(adapter_dir)
    problems += check_config(config, target.max_lora_rank)
    problems += check_base_name(config.get("base_model_name_or_path"), target.names)
    try:
        index = read_index(adapter_dir / WEIGHTS)
        base = base_model_shapes(target.weights_dir)
        architectures = base_architectures(target.weights_dir)
    except (OSError, ValueError) as exc:
        raise PreflightError(adapter_dir, [*problems, str(exc)]) from exc
    problems += check_tensors(index.shapes(), base, config, target.max_lora_rank)
    problems += check_embedding_lora(index.shapes(), architectures)
    if not problems:  # only a well-formed adapter of bounded size is worth reading
        problems += check_dtypes_and_values(index)
    if problems:
        raise PreflightError(adapter_dir, problems)
    return PreflightReport(
        adapter=adapter_dir,
        rank=max_rank(config),
        target_modules=sorted(target_list(config)),
        tensors=len(index.tensors),
        base_model=str(config.get("base_model_name_or_path")),
        checks=[
            "files",
            "config",
            "base name",
            "tensor shapes",
            "embedding modules",
            "dtypes and values",
        ],
    )
