"""``adapter_config.json`` checks: the rules vLLM applies at load time (shared FACTS 10.3.4)
and the types those rules assume (a config that crashes vLLM's parser is as bad as one it
refuses), plus the config helpers the tensor checks share (ranks, targets).

:class:`PreflightError`, raised by every preflight check, lives here as the first of them;
:mod:`feinschliff.serving.preflight` runs all checks and re-exports every name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from feinschliff.serving.adapter_files import CONFIG, MAX_CONFIG_BYTES
from feinschliff.specs.common import VLLM_LORA_RANKS

# vLLM accepts modules_to_save only when it is None or exactly these (FACTS 10.3.4).
ALLOWED_MODULES_TO_SAVE = ({"classifier", "score"}, set())
REJECTED_INIT = ("pissa", "olora", "corda", "loftq")


class PreflightError(ValueError):
    """The adapter would fail (or silently misbehave) on the server; ``problems`` lists why."""

    def __init__(self, adapter: Path | str, problems: list[str], headline: str | None = None):
        self.problems = problems
        headline = headline or f"adapter {adapter} rejected"
        super().__init__(f"{headline}:\n  - " + "\n  - ".join(problems))


def read_config(adapter_dir: Path) -> dict[str, Any]:
    """``adapter_config.json`` as a dict (size-capped; invalid UTF-8/JSON or nesting refused)."""
    path = adapter_dir / CONFIG
    if path.stat().st_size > MAX_CONFIG_BYTES:  # check_files made sure it is a regular file
        raise PreflightError(adapter_dir, [f"{CONFIG} is larger than {MAX_CONFIG_BYTES} bytes"])
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise PreflightError(adapter_dir, [f"{CONFIG} is not valid JSON: {exc}"]) from exc
    if not isinstance(config, dict):
        raise PreflightError(adapter_dir, [f"{CONFIG} is not a JSON object"])
    return config


def check_config(config: dict[str, Any], max_lora_rank: int) -> list[str]:
    """The adapter_config.json rules vLLM enforces at load time (FACTS 10.3.4), plus the types
    those rules assume (a config that crashes vLLM's parser is as bad as one it refuses)."""
    problems = []
    if max_lora_rank not in VLLM_LORA_RANKS:
        problems.append(f"server max_lora_rank {max_lora_rank} is not one of {VLLM_LORA_RANKS}")
    missing = sorted(k for k in ("r", "lora_alpha", "target_modules") if config.get(k) is None)
    if missing:
        problems.append(f"missing required configuration fields: {missing}")
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r} is not LORA")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(key) or {}, dict):
            problems.append(f"{key} must be an object, got {short_repr(config.get(key))}")
    alphas = [config.get("lora_alpha"), *_pattern(config, "alpha_pattern").values()]
    if not all(_is_number(a) for a in alphas if a is not None):
        problems.append(f"lora_alpha values must be numbers, got {short_repr(alphas)}")
    targets = config.get("target_modules")
    if targets is not None and not (
        isinstance(targets, str)
        or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))
    ):
        problems.append(
            f"target_modules must be a list of names or a regex, got {short_repr(targets)}"
        )
    elif targets == []:
        problems.append("target_modules is empty")
    elif isinstance(targets, str) and targets != "all-linear":
        try:
            re.compile(targets)
        except re.error as exc:
            problems.append(f"target_modules {targets[:80]!r} is not a valid regex: {exc}")
    ranks = [config.get("r"), *_pattern(config, "rank_pattern").values()]
    if any(not _is_int(r) or r <= 0 for r in ranks if r is not None):
        problems.append(f"LoRA ranks must be positive integers, got {short_repr(ranks)}")
    elif max_rank(config) > max_lora_rank:
        problems.append(
            f"LoRA rank {max_rank(config)} is greater than max_lora_rank {max_lora_rank}"
        )
    if config.get("bias", "none") != "none":
        problems.append(f"adapter bias is not supported (bias={config.get('bias')!r})")
    if config.get("use_dora"):
        problems.append("DoRA is not supported by vLLM (use_dora=true)")
    mts = config.get("modules_to_save")
    if mts is not None and (
        not isinstance(mts, list) or set(map(str, mts)) not in ALLOWED_MODULES_TO_SAVE
    ):
        problems.append(
            f"modules_to_save={short_repr(mts)}: vLLM only supports None or ['classifier', 'score']"
        )
    if config.get("lora_bias"):
        problems.append("lora_bias is not supported")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(REJECTED_INIT):
        problems.append(f"init_lora_weights={init!r} is not supported (PiSSA/OLoRA/CorDA/LoftQ)")
    for key, what in (
        ("alora_invocation_tokens", "aLoRA"),
        ("layer_replication", "layer_replication"),
        ("use_bdlora", "BD-LoRA"),
        ("use_qalora", "QALoRA"),
    ):
        if config.get(key):
            problems.append(f"{what} is not supported ({key}={config[key]!r})")
    return problems


def max_rank(config: dict[str, Any]) -> int:
    """The largest rank the config gives any module (``r`` and ``rank_pattern``)."""
    ranks = [config.get("r") or 0, *_pattern(config, "rank_pattern").values()]
    return max(int(r) for r in ranks)


def config_rank(config: dict[str, Any], module: str) -> int | None:
    """The rank PEFT gives ``module``: its rank_pattern entry (key = name suffix or regex), else r.
    None when the config's ranks are invalid (reported by check_config)."""
    r = config.get("r")
    for key, rank in _pattern(config, "rank_pattern").items():
        if key == module or module.endswith("." + key):
            r = rank
            break
        pattern = compile_regex(rf"(.*\.)?(?:{key})$")
        if pattern is not None and pattern.match(module):
            r = rank
            break
    return r if _is_int(r) else None


def _pattern(config: dict[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key)
    return value if isinstance(value, dict) else {}


def compile_regex(regex: str) -> re.Pattern[str] | None:
    """``regex`` compiled, None if it is invalid (check_config reports that)."""
    try:
        return re.compile(regex)
    except re.error:
        return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (
        (_is_int(value) or isinstance(value, float))
        and value == value
        and abs(value) != float("inf")
    )


def short_repr(value: object) -> str:
    """``repr(value)`` cut to 80 characters, for problem messages."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def target_list(config: dict[str, Any]) -> set[str]:
    """The names in a list-valued ``target_modules`` (empty for a regex or "all-linear")."""
    targets = config.get("target_modules")
    return {t for t in targets if isinstance(t, str)} if isinstance(targets, list) else set()
