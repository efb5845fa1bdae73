"""Recipe-level entry points shared by the CLI and the Prefect flow: register + go live,
serving configs, and the local demo server.

With ``register.vllm`` in the recipe a promotion goes through the servers
(:func:`~feinschliff.serving.deploy.promote_live`); without it only the registry changes. Either
way the version is preflighted against the recipe's serving settings as they are now
(``register.max_lora_rank``, the base model): it was checked against those of its
registration, which may have changed since.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feinschliff import registry
from feinschliff.artifacts import AdapterRef
from feinschliff.recipe import Recipe
from feinschliff.serving import deploy
from feinschliff.serving.preflight import (
    PreflightError,
    base_names,
    base_target,
    check_base_name,
    check_config,
    check_recipe_served_model,
    check_served_model,
    read_config,
)
from feinschliff.serving.serve_config import ServedAdapter
from feinschliff.specs.register import VllmServer, VllmSpec

log = logging.getLogger(__name__)
DEMO_PROMPT = "Wie kann ich mein Passwort zurücksetzen?"


def registry_root(recipe: Recipe) -> registry.Root:
    """The recipe's registry: a local Path, or an FsspecStore for s3:// and other URLs."""
    return registry.open_root(recipe.register.registry)


def register_version(
    recipe: Recipe,
    adapter: AdapterRef,
    lineage: dict[str, Any],
    *,
    adapter_sha256: str | None = None,
) -> str:
    """Preflight against the recipe's base model, then add an immutable registry version
    (``adapter_sha256``: the adapter folder's hash where the caller has it already)."""
    return registry.register_adapter(
        registry_root(recipe),
        recipe.use_case,
        adapter,
        lineage,
        target=base_target(recipe),
        adapter_sha256=adapter_sha256,
    )


def publish_version(
    recipe: Recipe,
    version: str,
    *,
    why: str,
    decision: Any = None,
    expected: Any = registry.UNSET,
    on_promoted: Callable[[], None] | None = None,
    root: registry.Root | None = None,
) -> deploy.DeployReport | None:
    """Make ``version`` production: on the recipe's vLLM servers first when it has any.

    ``on_promoted``: called right after the alias moved (with vLLM: before the stable name is
    switched on the servers); a test hook for crashes between the two. ``root``: another
    registry than the recipe's (`registry promote --root`).
    """
    root = registry_root(recipe) if root is None else root
    if recipe.register.vllm is None:
        _check_fits(recipe, root, version, weights_needed=False)
        registry.promote(
            root, recipe.use_case, version, why=why, expected=expected, decision=decision
        )
        if on_promoted is not None:
            on_promoted()
        return None
    return deploy.promote_live(
        root,
        recipe.use_case,
        version,
        recipe.register.vllm,
        base_target(recipe),
        why=why,
        expected=expected,
        decision=decision,
        on_promoted=on_promoted,
    )


def rollback_version(
    recipe: Recipe, *, why: str, expected: Any = registry.UNSET, root: registry.Root | None = None
) -> deploy.DeployReport | None:
    """production := previous, on the recipe's vLLM servers first when it has any; the version
    rolled back to is preflighted against the recipe's serving settings either way."""
    root = registry_root(recipe) if root is None else root
    if recipe.register.vllm is not None:
        return deploy.rollback_live(
            root,
            recipe.use_case,
            recipe.register.vllm,
            base_target(recipe),
            why=why,
            expected=expected,
        )
    previous = registry.read_aliases(root, recipe.use_case).get("previous")
    if previous is None:
        raise registry.RegistryError(f"{recipe.use_case} has no previous version to roll back to")
    _check_fits(recipe, root, previous, weights_needed=False)
    # expected_previous: the version checked here is the one production moves to
    registry.rollback(root, recipe.use_case, why=why, expected=expected, expected_previous=previous)
    return None


def served_adapter(recipe: Recipe, version: str | None = None) -> ServedAdapter:
    """The production (or given) version as the serving-config renderers need it, refused
    (PreflightError) when it does not fit the recipe's servers as configured now."""
    root = registry_root(recipe)
    version = version or registry.read_aliases(root, recipe.use_case).get("production")
    if version is None:
        raise registry.RegistryError(f"{recipe.use_case} has no production version yet")
    if version in registry.retired(root, recipe.use_case):  # never to be served again
        raise registry.RegistryError(f"{recipe.use_case}/{version} is retired")
    check_recipe_served_model(recipe)  # by name first: no local weights needed for that
    _check_fits(recipe, root, version)
    spec = recipe.register.vllm or _local_spec(
        base_target(recipe).weights_dir, "http://127.0.0.1:8000"
    )
    return ServedAdapter(
        name=recipe.use_case,
        version=version,
        path=deploy.stage_files(root, recipe.use_case, version, spec),
        base_model=spec.model,
        max_lora_rank=recipe.register.max_lora_rank,
        max_loras=spec.max_loras,
        mode=spec.mode,
        resolver_dir=spec.resolver_dir,
        api_key_envs=tuple(sorted({s.api_key_env for s in spec.servers if s.api_key_env})),
    )


def _check_fits(
    recipe: Recipe, root: registry.Root, version: str, *, weights_needed: bool | None = None
) -> None:
    """Preflight ``version`` against the recipe's serving settings. Where the base model's
    weights are not on this machine (a config printed for remote servers, an operator's
    registry-only promotion or emergency rollback from a laptop) without the shape check: the
    version's shapes were checked on the base model when it was registered. ``weights_needed``
    (default: without ``register.vllm``, for the local demo server) refuses that case."""
    if weights_needed is None:
        weights_needed = recipe.register.vllm is None
    try:
        target = base_target(recipe)
    except PreflightError:
        if weights_needed:
            raise
        adapter = registry.adapter_path(root, recipe.use_case, version)
        config = read_config(adapter)
        served = (recipe.register.vllm.model,) if recipe.register.vllm is not None else ()
        names = (*base_names(recipe), *served)
        problems = check_config(config, recipe.register.max_lora_rank)
        problems += check_base_name(config.get("base_model_name_or_path"), names)
        if problems:
            raise PreflightError(adapter, problems) from None
        return
    deploy.preflight_version(root, recipe.use_case, version, target)


@dataclass
class DemoAnswer:
    prompt: str
    base: str
    adapter: str
    version: str
    url: str


def serve_demo(
    recipe: Recipe,
    *,
    prompt: str = DEMO_PROMPT,
    url: str | None = None,
    workdir: Path | None = None,
) -> DemoAnswer:
    """Load the production adapter into a vLLM server and answer one prompt with and without it.

    ``url``: an already running server (its --model must be the recipe's base model); otherwise
    a local one is installed if needed (scripts/install_vllm.sh), started, and stopped after.
    """
    from feinschliff.models import feinschliff_home
    from feinschliff.serving.vllm_client import VllmClient
    from feinschliff.serving.vllm_server import install_vllm, start_vllm

    root = registry_root(recipe)
    version = registry.read_aliases(root, recipe.use_case).get("production")
    if version is None:
        raise registry.RegistryError(
            f"{recipe.use_case} has no production version; run `make demo` first"
        )
    target = base_target(recipe)
    deploy.preflight_version(root, recipe.use_case, version, target)  # before a server starts
    settings = recipe.register.vllm or _local_spec(target.weights_dir, "http://127.0.0.1:8000")
    server = None
    if url is None:
        workdir = workdir or feinschliff_home() / "serve-demo"
        server = start_vllm(
            str(target.weights_dir),
            venv=install_vllm(),
            log_path=workdir / "vllm.log",
            max_lora_rank=recipe.register.max_lora_rank,
            max_loras=settings.max_loras,  # keep_versions + 2 adapters are loaded at once
        )
        url = server.url
        log.info("vLLM ready in %.0f s, %.0f MB RSS", server.ready_s, server.rss_mb())
        # a server on this machine reads adapter_dir itself, not the pods' mount path
        settings = settings.model_copy(update={"server_adapter_dir": None})
    try:
        with VllmClient(VllmServer(url=url)) as client:
            served_model = client.base_model_root()
        names = tuple(dict.fromkeys([*base_names(recipe), str(target.weights_dir)]))
        check_served_model(served_model, names, f"the server at {url} runs --model")
        # The recipe's serving settings (adapter_dir, keep_versions), this one server, runtime.
        spec = settings.model_copy(
            update={"servers": [VllmServer(url=url)], "model": served_model, "mode": "runtime"}
        )
        deploy.reconcile(root, recipe.use_case, spec)
        with VllmClient(spec.servers[0], timeout_s=300) as client:
            base = client.chat(spec.model, prompt)
            tuned = client.chat(recipe.use_case, prompt)
    finally:
        if server is not None:
            server.stop()
    return DemoAnswer(prompt=prompt, base=base, adapter=tuned, version=version, url=url)


def _local_spec(model_dir: Path, url: str) -> VllmSpec:
    return VllmSpec(servers=[VllmServer(url=url)], model=str(model_dir))
