"""One serving config for several use cases on the same servers (`serve-config A.yaml B.yaml`).

A vLLM server has one ``--model``, one ``--max-lora-rank``, one ``--max-loras`` and one
``--lora-modules`` list, so the recipes sharing it must agree on what the server is (base
model, served ``--model``, mode, resolver folder, replicas): :func:`check_shared` refuses a
disagreement naming both recipe files and the field. The slot count follows the rule of
:func:`feinschliff.serving.staging.warn_slots` for all use cases together. Renders text only;
a single recipe keeps :func:`feinschliff.serving.serve_config.render`'s output.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from feinschliff.recipe import Recipe
from feinschliff.serving.serve_config import (
    ServeConfigError,
    ServedAdapter,
    Target,
    auth_lines,
    check_tgi_path,
    render_vllm_k8s,
)
from feinschliff.specs.register import VllmSpec


@dataclass(frozen=True)
class SharedUseCase:
    """A recipe as given on the command line (``source``, named in messages) and its adapter."""

    source: str
    recipe: Recipe
    adapter: ServedAdapter | None = None


def check_shared(items: list[SharedUseCase], target: Target) -> None:
    """Refuse (ServeConfigError) recipes that cannot share one server. Reads the recipes only
    (the served model of a recipe without ``register.vllm`` is its local base folder)."""
    if target == "ollama":
        raise ServeConfigError(
            "--target ollama makes one Modelfile (one Ollama model) per use case: run "
            "`feinschliff serve-config RECIPE --target ollama` once per recipe"
        )
    for field, value in _SERVER_FIELDS:
        _agree(items, field, value)
    _agree_on_base_model(items)


def slots(items: list[SharedUseCase]) -> tuple[int, str]:
    """The shared server's ``--max-loras`` and why: every use case's stable name and kept
    versions (keep_versions + 1 each), one being staged, one kept free (vLLM CPU applies an
    adapter to base-model requests when every slot is used: staging's warning counts so), and
    no fewer than any recipe's own ``register.vllm.max_loras``."""
    keeps = [_spec(i.recipe).keep_versions + 1 for i in items]
    need = sum(keeps) + 2
    largest = max(_spec(i.recipe).max_loras for i in items)
    why = f"{' + '.join(map(str, keeps))} (keep_versions + 1 per use case) + 1 staged + 1 free"
    if largest > need:
        return largest, f"the largest register.vllm.max_loras (needed: {why} = {need})"
    return need, why


def render_shared(items: list[SharedUseCase], target: Target, k8s_model: str | None) -> str:
    """The config of one server for all ``items`` (checked by :func:`check_shared` first)."""
    adapters = [i.adapter for i in items if i.adapter is not None]
    if len(adapters) != len(items):
        raise ValueError("render_shared needs every item's adapter")
    if target == "vllm":
        return _render_vllm(items, adapters)
    if target == "vllm-k8s":
        return "---\n".join(render_vllm_k8s(a, k8s_model) for a in adapters)
    if target == "tgi":
        for a in adapters:
            check_tgi_path(a.path)
        joined = ",".join(f"{a.name}={a.path}" for a in adapters)
        names = ", ".join(a.name for a in adapters)
        return (
            f"# TGI has no runtime load endpoint: restart with the new value to switch {names}\n"
            f"LORA_ADAPTERS={shlex.quote(joined)}\n"
            "# request: POST /generate "
            f'{{"inputs": "...", "parameters": {{"adapter_id": "{adapters[0].name}"}}}}\n'
        )
    raise ServeConfigError(f"--target {target} takes one recipe")


def _render_vllm(items: list[SharedUseCase], adapters: list[ServedAdapter]) -> str:
    first = adapters[0]
    rank = max(a.max_lora_rank for a in adapters)
    max_loras, why = slots(items)
    env = [("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "true")]
    if first.mode == "resolver":
        env += [
            ("VLLM_PLUGINS", "lora_filesystem_resolver"),
            ("VLLM_LORA_RESOLVER_CACHE_DIR", str(first.resolver_dir)),
        ]
    served = ", ".join(
        f"{a.name} = {a.version} ({i.source})" for i, a in zip(items, adapters, strict=True)
    )
    lines = [f"# one server for {len(items)} use cases: {served}"]
    top = [i.source for i in items if i.recipe.register.max_lora_rank == rank]
    lines.append(f"# --max-lora-rank {rank}: the largest register.max_lora_rank ({top[0]})")
    lines.append(f"# --max-loras {max_loras}: {why}")
    low = [i.source for i in items if _spec(i.recipe).max_loras < max_loras]
    if low:  # staging warns by the recipe's own value, which must be the server's
        lines.append(
            f"# set register.vllm.max_loras: {max_loras} in {', '.join(low)} too: staging "
            "counts every use case's adapters on the server against it"
        )
    args = ["python", "-m", "vllm.entrypoints.openai.api_server", "--model", first.base_model]
    args += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(max_loras)]
    args += ["--max-cpu-loras", str(max_loras * 2)]
    if first.mode == "resolver":
        lines.append(
            f"# served by the resolver from {first.resolver_dir}/<use case>/ "
            "(`feinschliff registry reconcile RECIPE` writes it, per recipe)"
        )
    else:  # one --lora-modules with every module: vLLM keeps only the last of repeated flags
        args.append("--lora-modules")
        for a in adapters:
            module = {"name": a.name, "path": a.path, "base_model_name": a.base_model}
            args.append(json.dumps(module, separators=(",", ":")))
        lines.append(
            "# a replica restarted after a later promotion comes back on these versions: run "
            "`feinschliff registry reconcile RECIPE` for each recipe after every restart"
        )
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env]
    lines += auth_lines(tuple(sorted({e for a in adapters for e in a.api_key_envs})))
    lines.append(" \\\n  ".join(shlex.quote(x) for x in args))
    return "\n".join(lines) + "\n"


def _spec(recipe: Recipe) -> VllmSpec:
    """The recipe's vLLM settings; without ``register.vllm`` the defaults the local server
    uses (publish._local_spec; servers and model are not read from it)."""
    return recipe.register.vllm or VllmSpec.model_construct()


def _served_model(recipe: Recipe) -> str:
    if recipe.register.vllm is not None:
        return recipe.register.vllm.model
    from feinschliff.serving.preflight import base_target

    return str(base_target(recipe).weights_dir)  # what publish serves without register.vllm


def _servers(recipe: Recipe) -> str | None:
    if recipe.register.vllm is None:
        return None  # the local demo server: nothing to compare
    return ", ".join(sorted(s.url for s in recipe.register.vllm.servers))


# field -> its value in a recipe (None: not compared for that recipe)
_SERVER_FIELDS: tuple[tuple[str, Callable[[Recipe], Any]], ...] = (
    ("use_case", lambda r: r.use_case),  # equal names: one would hide the other
    ("register.vllm.model", _served_model),
    ("register.vllm.mode", lambda r: _spec(r).mode),
    ("register.vllm.resolver_dir", lambda r: _spec(r).resolver_dir),
    ("register.vllm.servers", _servers),
)


def _agree(items: list[SharedUseCase], field: str, value: Callable[[Recipe], Any]) -> None:
    seen: list[tuple[SharedUseCase, Any]] = []
    for item in items:
        v = value(item.recipe)
        if v is None:
            continue
        for other, w in seen:
            clash = v == w if field == "use_case" else v != w
            if clash:
                raise ServeConfigError(_disagree(other, w, item, v, field))
        seen.append((item, v))


# why a field must agree, said when it does not
_WHY = {
    "register.vllm.model": "one vLLM server serves one base model (its --model); print one "
    "config per base model",
    "register.vllm.mode": "a server either loads adapters at runtime or through the "
    "filesystem resolver",
    "register.vllm.resolver_dir": "a server has one VLLM_LORA_RESOLVER_CACHE_DIR",
    "register.vllm.servers": "one config is for the replicas that serve every use case; "
    "print one config per set of servers",
}


def _disagree(a: SharedUseCase, va: Any, b: SharedUseCase, vb: Any, field: str) -> str:
    if field == "use_case":
        return (
            f"{a.source} and {b.source} have the same use_case {va!r}: one server serves a "
            "name once; give each use case once"
        )
    return (
        f"{a.source} and {b.source} disagree on {field}: {_shown(a, va)} vs {_shown(b, vb)}; "
        f"{_WHY[field]}"
    )


def _shown(item: SharedUseCase, value: Any) -> str:
    if item.recipe.register.vllm is None:  # its value is the local server's default
        return f"{value!r} ({item.source} has no register.vllm: the local server's)"
    return repr(value)


def _agree_on_base_model(items: list[SharedUseCase]) -> None:
    """Two recipes whose servers pass the same path (KServe's /mnt/models) may still name
    different base models: each adapter was checked on its own recipe's base."""
    from feinschliff.serving.base_model import base_names, same_model_name

    names = [(i, base_names(i.recipe)) for i in items]
    first, ours = names[0]
    for item, theirs in names[1:]:
        if not any(same_model_name(x, y) for x in ours for y in theirs):
            raise ServeConfigError(
                f"{first.source} and {item.source} disagree on base_model.name "
                f"({first.recipe.base_model.name!r} vs {item.recipe.base_model.name!r}): one "
                "vLLM server serves one base model; print one config per base model"
            )
