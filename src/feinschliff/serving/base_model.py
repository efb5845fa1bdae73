"""The base model an adapter must fit: :class:`BaseTarget` from a recipe (local weights for the
shape check, the names ``base_model_name_or_path`` may use) and the name-match rule that also
checks the servers' ``--model`` against the recipe's base model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from feinschliff.serving.adapter_config import PreflightError, short_repr

if TYPE_CHECKING:
    from feinschliff.recipe import Recipe

_NO_BASE = "cannot check adapters against base model {name}"
log = logging.getLogger(__name__)


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
        return [f"base_model_name_or_path must be a string, got {short_repr(name)}"]
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
