"""Preflight: refuse an adapter before it reaches the registry or any server.

vLLM validates an adapter only when it is loaded, answers a bad one with a 500, and does not
catch every base-model mismatch (an adapter with *smaller* shapes than the model was accepted;
shared FACTS section 5). So every check vLLM applies to ``adapter_config.json`` (FACTS 10.3.4)
runs here first, plus what vLLM does not check:

- files: ``adapter_config.json`` and ``adapter_model.safetensors`` present; no pickle weights
  (``.bin``/``.pt``/...: loading them runs arbitrary code); no symlink that leaves the adapter
  directory; no FIFOs or devices (a copy would hang or read a device);
- base model: ``base_model_name_or_path`` names the expected model, and every LoRA tensor's shape
  fits the base model's weight of the same module (read from safetensors headers only: no tensor
  data is loaded, so this takes milliseconds even for an 8B model).

All problems are collected and raised together in one :class:`PreflightError`.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feinschliff.specs.common import VLLM_LORA_RANKS

if TYPE_CHECKING:
    from feinschliff.recipe import Recipe

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".npz", ".joblib")
# vLLM accepts modules_to_save only when it is None or exactly these (FACTS 10.3.4).
ALLOWED_MODULES_TO_SAVE = ({"classifier", "score"}, set())
REJECTED_INIT = ("pissa", "olora", "corda", "loftq")
MAX_HEADER = 100 * 1024 * 1024
SAFE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_TENSOR_RE = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\."
    r"(?P<kind>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B"
    r"|lora_magnitude_vector|lora_A\.bias|lora_B\.bias)$"
)


class PreflightError(ValueError):
    """The adapter would fail (or silently misbehave) on the server; ``problems`` lists why."""

    def __init__(self, adapter: Path | str, problems: list[str]):
        self.problems = problems
        super().__init__(f"adapter {adapter} rejected:\n  - " + "\n  - ".join(problems))


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
    try:
        config = json.loads((adapter_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PreflightError(adapter_dir, [f"{CONFIG} is not valid JSON: {exc}"]) from exc
    if not isinstance(config, dict):
        raise PreflightError(adapter_dir, [f"{CONFIG} is not a JSON object"])
    problems += check_config(config, target.max_lora_rank)
    problems += check_base_name(str(config.get("base_model_name_or_path") or ""), target.names)
    try:
        tensors = read_safetensors_header(adapter_dir / WEIGHTS)
        base = base_model_shapes(target.weights_dir)
    except (OSError, ValueError) as exc:
        raise PreflightError(adapter_dir, [*problems, str(exc)]) from exc
    problems += check_tensors(tensors, base, config, target.max_lora_rank)
    if problems:
        raise PreflightError(adapter_dir, problems)
    return PreflightReport(
        adapter=adapter_dir,
        rank=_max_rank(config),
        target_modules=sorted(_target_list(config)),
        tensors=len(tensors),
        base_model=str(config.get("base_model_name_or_path")),
        checks=["files", "config", "base name", "tensor shapes"],
    )


def check_files(adapter_dir: Path) -> list[str]:
    """Presence of config and safetensors weights; no pickles, escaping links or odd files."""
    if adapter_dir.is_symlink() or not adapter_dir.is_dir():
        return [f"{adapter_dir} is not a directory"]
    root = adapter_dir.resolve()
    problems = []
    for path in sorted(adapter_dir.rglob("*")):
        rel = path.relative_to(adapter_dir)
        if path.is_symlink():
            target = path.resolve()
            if target != root and root not in target.parents:
                problems.append(f"{rel} is a symlink that leaves the adapter directory")
                continue
        if path.suffix.lower() in PICKLE_SUFFIXES:
            problems.append(f"{rel}: pickle-based weights are refused (safetensors only)")
        elif path.exists() and not (path.is_file() or path.is_dir()):
            problems.append(f"{rel} is not a regular file")
    if not (adapter_dir / CONFIG).is_file():
        problems.append(f"no {CONFIG} (not a PEFT adapter)")
    if not (adapter_dir / WEIGHTS).is_file():
        problems.append(f"no {WEIGHTS}")
    return problems


def check_config(config: dict[str, Any], max_lora_rank: int) -> list[str]:
    """The adapter_config.json rules vLLM enforces at load time (FACTS 10.3.4)."""
    problems = []
    if max_lora_rank not in VLLM_LORA_RANKS:
        problems.append(f"server max_lora_rank {max_lora_rank} is not one of {VLLM_LORA_RANKS}")
    missing = sorted(k for k in ("r", "lora_alpha", "target_modules") if config.get(k) is None)
    if missing:
        problems.append(f"missing required configuration fields: {missing}")
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r} is not LORA")
    ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    if any(not isinstance(r, int) or isinstance(r, bool) or r <= 0 for r in ranks if r is not None):
        problems.append(f"LoRA ranks must be positive integers, got {ranks}")
    elif _max_rank(config) > max_lora_rank:
        problems.append(
            f"LoRA rank {_max_rank(config)} is greater than max_lora_rank {max_lora_rank}"
        )
    if config.get("bias", "none") != "none":
        problems.append(f"adapter bias is not supported (bias={config.get('bias')!r})")
    if config.get("use_dora"):
        problems.append("DoRA is not supported by vLLM (use_dora=true)")
    mts = config.get("modules_to_save")
    if mts is not None and set(mts) not in ALLOWED_MODULES_TO_SAVE:
        problems.append(
            f"modules_to_save={mts!r}: vLLM only supports None or ['classifier', 'score']"
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


def check_base_name(name: str, accepted: tuple[str, ...]) -> list[str]:
    """``base_model_name_or_path`` must name the expected model.

    Equal strings, the same existing directory, or the same last path component (an HF id
    ``org/Model`` vs a local copy ``/models/Model``) count as a match; the tensor shapes are
    checked separately, so a same-named but different model is still caught.
    """
    if not name:
        return ["adapter_config.json has no base_model_name_or_path"]
    for ok in accepted:
        if name == ok or _same_dir(name, ok) or _tail(name) == _tail(ok):
            return []
    return [
        f"base_model_name_or_path {name!r} is not the served base model ({', '.join(accepted)})"
    ]


def read_safetensors_header(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors header, checked for sane offsets."""
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path.name}: not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", raw)
        if length > min(MAX_HEADER, size - 8):
            raise ValueError(f"{path.name}: not a safetensors file (header length {length})")
        try:
            header = json.loads(f.read(length))
        except ValueError as exc:
            raise ValueError(f"{path.name}: corrupt safetensors header ({exc})") from exc
    shapes = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if not 0 <= start <= end <= size - 8 - length:
            raise ValueError(f"{path.name}: tensor {name} lies outside the file (truncated?)")
        shapes[name] = list(info["shape"])
    return shapes


def base_model_shapes(model_dir: Path) -> dict[str, list[int]]:
    """Weight name -> shape for a local HF model folder (single or sharded safetensors)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ValueError(f"base model {model_dir} has no *.safetensors to compare shapes with")
    shapes: dict[str, list[int]] = {}
    for f in files:
        shapes.update(read_safetensors_header(f))
    config_path = Path(model_dir) / "config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    if "lm_head.weight" not in shapes and config.get("tie_word_embeddings", True):
        embed = next((k for k in shapes if k.endswith("embed_tokens.weight")), None)
        if embed:  # tied output projection: same shape as the input embedding
            shapes["lm_head.weight"] = shapes[embed]
    return shapes


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
            problems.append(f"unexpected tensor {name} (full weights / modules_to_save?)")
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
    for module, parts in sorted(modules.items()):
        leaf = module.rsplit(".", 1)[-1]
        if regex is not None and regex != "all-linear":
            if not re.fullmatch(regex, module):
                problems.append(f"{module} does not match target_modules {regex!r}")
        elif targets and leaf not in targets:
            problems.append(f"{module} is not in target_modules {sorted(targets)}")
        problems += _check_module(module, parts, base.get(f"{module}.weight"), max_lora_rank)
    present = {m.rsplit(".", 1)[-1] for m in modules}
    missing = sorted(t for t in targets if t not in present) if regex is None else []
    if missing and modules:
        problems.append(f"target_modules {missing} have no LoRA weights in the adapter")
    return problems


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
    ranks = [config.get("r") or 0, *(config.get("rank_pattern") or {}).values()]
    return max(int(r) for r in ranks)


def _target_list(config: dict[str, Any]) -> set[str]:
    targets = config.get("target_modules")
    return set(targets) if isinstance(targets, list) else set()


def _tail(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1].lower()


def _same_dir(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    try:
        return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()
    except OSError:
        return False


def base_target(recipe: Recipe) -> BaseTarget:
    """The base model a recipe's adapters must fit, with local weights for the shape check."""
    from feinschliff.models import ModelFetchError, resolve_model

    name = recipe.base_model.name
    try:
        resolved = resolve_model(name, fetch=False)
    except ModelFetchError as exc:
        raise PreflightError(name, [str(exc)]) from exc
    weights = Path(resolved)
    if not weights.is_dir():  # an HF id: only a copy already in the local HF cache is used
        try:
            from huggingface_hub import snapshot_download

            weights = Path(
                snapshot_download(
                    resolved, revision=recipe.base_model.revision, local_files_only=True
                )
            )
        except Exception as exc:  # noqa: BLE001 - any miss means: no local weights
            raise PreflightError(
                name, [f"base model {name} is not available locally to compare shapes: {exc}"]
            ) from exc
    names = [name, resolved, str(weights)]
    if recipe.register.vllm is not None:
        names.append(recipe.register.vllm.model)
    return BaseTarget(
        names=tuple(dict.fromkeys(names)),
        weights_dir=weights,
        max_lora_rank=recipe.register.max_lora_rank,
    )
