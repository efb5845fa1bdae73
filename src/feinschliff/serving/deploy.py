"""Make vLLM servers serve what the registry says: live promotion, rollback, reconcile.

Served names for a use case ``support-de``:

- ``support-de``: the production version; what clients ask for.
- ``support-de@v0003``: a pinned version, loaded for the last ``keep_versions`` production
  versions (for pinning clients, comparisons and an instant rollback).

Every version is served from its **own path** (``<adapter_dir>/<use_case>/<version>-<sha12>/``,
a copy of the immutable registry version): vLLM keys prefix-cache blocks by (adapter name, path),
so a path never holds two different weights. Switching ``support-de`` to a new version is an
unload followed at once by a load from the new path, not vLLM's ``load_inplace``: vLLM 0.32
keeps the load request it was given for every later request to the name, and with
``load_inplace`` on it the worker re-reads the adapter from disk on every engine step
(vllm-project/vllm#33791). The price is a short window between the unload and the load (about
as long as loading the adapter) in which ``support-de`` answers 404: clients retry.

A promotion loads and verifies the new version under its pinned name on every replica *before*
the production alias moves; only then is the stable name switched and superseded versions
unloaded. If it fails or loses the compare-and-swap, the servers are reconciled back to the
registry. A per-use-case serve lock serialises promotions, rollbacks and reconciles on one
registry, so a losing promotion never touches a server.

vLLM reads adapters from local paths: a version of a remote registry (``s3://...``) is first
materialised into the local registry cache, keyed by its content hash
(:func:`feinschliff.registry.local_version`), preflighted there and then copied to its serving path.

Resolver mode writes the ``lora_filesystem_resolver`` layout instead
(:func:`~feinschliff.serving.staging.write_resolver_layout`). The resolver always loads
``<resolver_dir>/<name>``, the same path for every version of ``support-de``: a running server
keeps the adapter it resolved first, and even after an unload its prefix-cache blocks (keyed by
name + path) could mix in the old weights. So pinned names (immutable folders) are live at once,
the stable name after a (rolling) restart. The report says so. A promotion first writes the new
pinned folder and has every replica resolve it (a completion), so a version the servers cannot
load is refused before the stable folder is rewritten.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

from feinschliff import registry
from feinschliff.serving.deploy_report import Action, DeployError, DeployReport
from feinschliff.serving.preflight import BaseTarget, preflight
from feinschliff.serving.staging import (  # noqa: F401 - PIN: re-exported
    PIN,
    is_managed,
    pinned_name,
    stage_files,
    warn_slots,
    write_resolver_folder,
    write_resolver_layout,
)
from feinschliff.serving.vllm_client import VllmClient, VllmError
from feinschliff.specs.register import VllmSpec

log = logging.getLogger(__name__)
Stable = Literal["unload", "keep", "refuse"]


def desired_names(root: registry.Root, use_case: str, spec: VllmSpec) -> dict[str, str]:
    """Served name -> version the registry wants: stable name + the kept pinned versions."""
    history = registry.production_history(root, use_case)
    if not history:
        return {}
    names = {use_case: history[0]}
    names |= {pinned_name(use_case, v): v for v in history[: spec.keep_versions]}
    return names


def promote_live(
    root: registry.Root,
    use_case: str,
    version: str,
    spec: VllmSpec,
    target: BaseTarget,
    *,
    why: str,
    expected: Any = registry.UNSET,
    decision: Any = None,
    on_promoted: Callable[[], None] | None = None,
) -> DeployReport:
    """Preflight, load + verify ``version`` on every replica, move production, reconcile.

    Raises PreflightError before any server call, AliasConflict (nothing loaded) when the
    production alias is not ``expected`` (default: the production read when this starts, so
    of two concurrent promotions the second conflicts), DeployError when a replica fails
    (alias unchanged).
    ``on_promoted``: called once the alias moved, before the stable name is switched (the
    reliability suite crashes the process there; a later ``reconcile`` converges).
    """
    if expected is registry.UNSET:  # read before the lock: the compare of compare-and-swap
        expected = registry.read_aliases(root, use_case).get("production")
    preflight_version(root, use_case, version, target)
    _require_keys(spec)
    with registry.lock(root, use_case, ".serve.lock"):
        _check_expected(root, use_case, {"production": expected})
        try:
            staged = _stage_everywhere(root, use_case, version, spec)
            registry.promote(root, use_case, version, why=why, expected=expected, decision=decision)
        except BaseException:
            _reconcile_after_failure(root, use_case, spec)
            raise
        if on_promoted is not None:
            on_promoted()
        report = _reconcile_after_move(root, use_case, spec)
        report.actions[:0] = staged
    return report


def rollback_live(
    root: registry.Root,
    use_case: str,
    spec: VllmSpec,
    target: BaseTarget,
    *,
    why: str,
    expected: Any = registry.UNSET,
) -> DeployReport:
    """production := previous (verified on every replica first), then reconcile.

    Compare-and-swap on both aliases as read when this starts (production: ``expected`` when
    given): if either moved meanwhile, AliasConflict before any server is touched.
    """
    aliases = registry.read_aliases(root, use_case)
    if expected is registry.UNSET:
        expected = aliases.get("production")
    previous = aliases.get("previous")
    if previous is None:
        raise registry.RegistryError(f"{use_case} has no previous version to roll back to")
    preflight_version(root, use_case, previous, target)
    _require_keys(spec)
    with registry.lock(root, use_case, ".serve.lock"):
        _check_expected(root, use_case, {"production": expected, "previous": previous})
        try:
            staged = _stage_everywhere(root, use_case, previous, spec)
            registry.rollback(
                root, use_case, why=why, expected=expected, expected_previous=previous
            )
        except BaseException:
            _reconcile_after_failure(root, use_case, spec)
            raise
        report = _reconcile_after_move(root, use_case, spec)
        report.actions[:0] = staged
    return report


def _reconcile_after_move(root: registry.Root, use_case: str, spec: VllmSpec) -> DeployReport:
    """``_reconcile_locked`` once the alias moved: a disk error while staging (a full serving
    volume) names the new production and the way to converge, not just the OS's words."""
    try:
        return _reconcile_locked(root, use_case, spec)
    except OSError as exc:
        production = registry.read_aliases(root, use_case).get("production")
        raise DeployError(
            f"registry production of {use_case} is {production} now, but writing the serving "
            f"files failed: {exc} (free or fix the volume, then run "
            "`feinschliff registry reconcile RECIPE`)"
        ) from exc


def reconcile(
    root: registry.Root, use_case: str, spec: VllmSpec, *, allow_unserve: bool = False
) -> DeployReport:
    """Load, switch and unload until every replica serves exactly what the registry says.

    Idempotent: a second run finds nothing to do (it only lists the servers' adapters).
    A registry without the use case raises RegistryError (a wrong root, not an empty
    registry). One with no production, while a replica serves the stable name, raises
    DeployError before any server is changed unless ``allow_unserve``: unloading what
    clients call is never the silent result of reading the wrong registry.
    """
    _require_keys(spec)
    if not registry.has_use_case(root, use_case):
        raise registry.RegistryError(
            f"no use case {use_case!r} in the registry at {registry.location(root)}: "
            "nothing to reconcile with (wrong registry?); no server was touched"
        )
    with registry.lock(root, use_case, ".serve.lock"):
        return _reconcile_locked(
            root, use_case, spec, stable="unload" if allow_unserve else "refuse"
        )


def _check_expected(root: registry.Root, use_case: str, expected: dict[str, Any]) -> None:
    """Under the serve lock, before any server call: the aliases are still what we saw."""
    aliases = registry.read_aliases(root, use_case)
    for alias, want in expected.items():
        if aliases.get(alias) != want:
            raise registry.AliasConflict(
                f"{use_case}:{alias} is {aliases.get(alias)}, expected {want} "
                "(changed by someone else; nothing was loaded)"
            )


def _reconcile_after_failure(root: registry.Root, use_case: str, spec: VllmSpec) -> None:
    """Unload what a failed or lost promotion staged; the original error is what matters."""
    try:  # "keep": a stable name this change did not load is not this cleanup's to unload
        _reconcile_locked(root, use_case, spec, stable="keep")
    except Exception as exc:  # noqa: BLE001 - reported, then the caller re-raises its own error
        log.warning("could not reconcile %s after a failed change: %s", use_case, exc)


def _reconcile_locked(
    root: registry.Root, use_case: str, spec: VllmSpec, stable: Stable = "unload"
) -> DeployReport:
    """``stable``: what to do with the stable name when the registry has no production for
    it (see :func:`reconcile`): unload it, keep it, or refuse before any change."""
    desired = desired_names(root, use_case, spec)
    report = DeployReport(
        use_case=use_case,
        production=registry.read_aliases(root, use_case).get("production"),
        desired=desired,
    )
    keep = set() if use_case in desired or stable == "unload" else {use_case}
    if keep and stable == "refuse":
        _refuse_unserve(root, use_case, spec)
    if spec.mode == "resolver":
        rdir = str(Path(spec.resolver_dir or ""))
        release = partial(_unload_everywhere, spec)
        for op, name, detail in write_resolver_layout(root, use_case, spec, desired, keep, release):
            report.actions.append(Action(rdir, op, name, detail))
            report.restart_needed |= op == "write" and name == use_case
        return report
    paths = {v: stage_files(root, use_case, v, spec) for v in set(desired.values())}
    errors = []
    for server in spec.servers:
        try:
            with VllmClient(server, timeout_s=spec.timeout_s, retries=spec.retries) as client:
                _reconcile_server(client, use_case, spec, desired, paths, report, keep)
        except (VllmError, DeployError) as exc:  # one broken replica must not stop the others
            errors.append(str(exc))
    if errors:
        raise DeployError(
            f"registry production of {use_case} is {report.production}, but: "
            + "; ".join(errors)
            + " (fix the replica, then run `feinschliff registry reconcile RECIPE`)"
        )
    return report


def _unload_everywhere(spec: VllmSpec, name: str) -> list[str]:
    """Resolver mode: unload ``name`` wherever the resolver loaded it, before its folder goes;
    returns the servers that could not be asked or refused (there the folder must stay)."""
    failed = []
    for server in spec.servers:
        try:
            with VllmClient(server, timeout_s=spec.timeout_s, retries=spec.retries) as client:
                client.unload(name)  # 404 (never resolved there) is fine
        except VllmError as exc:
            failed.append(str(exc))
    return failed


def _refuse_unserve(root: registry.Root, use_case: str, spec: VllmSpec) -> None:
    """No production, but a replica (or the resolver folder) serves the stable name: refuse
    before any change; a wrong or recreated registry must not take it away from clients."""
    if spec.mode == "resolver":
        serving = [spec.resolver_dir] if (Path(spec.resolver_dir or "") / use_case).exists() else []
    else:
        serving = []
        for server in spec.servers:
            try:
                with VllmClient(server, timeout_s=spec.timeout_s, retries=spec.retries) as client:
                    if use_case in client.adapters():
                        serving.append(client.url)
            except VllmError as exc:  # unknown, so not safe to go on either
                raise DeployError(f"{exc}; no server was changed") from exc  # exc names it
    if serving:
        raise DeployError(
            f"the registry at {registry.location(root)} has no production version of "
            f"{use_case}, but {', '.join(map(str, serving))} serve(s) {use_case}: refusing to "
            "unload it (wrong registry?); no server was changed. To unload it anyway: "
            "`feinschliff registry reconcile RECIPE --allow-unserve`"
        )


def _reconcile_server(
    client: VllmClient,
    use_case: str,
    spec: VllmSpec,
    desired: dict[str, str],
    paths: dict[str, str],
    report: DeployReport,
    keep: set[str],
) -> None:
    _check_base(client, spec)
    every = client.adapters()
    loaded = {n: p for n, p in every.items() if is_managed(n, use_case)}
    if new := set(desired) - set(loaded):  # a staged promotion warned already
        warn_slots(client.url, spec, len(every) + len(new))
    # Pinned names first, the stable name last: it switches only once its version answers.
    for name in sorted(desired, key=lambda n: n == use_case):
        path = paths[desired[name]]
        op = _serve_from(client, name, path, loaded.get(name))
        if op is None:
            continue
        report.actions.append(Action(client.url, op, name, f"{desired[name]} from {path}"))
        client.complete(name, spec.verify_prompt, max_tokens=4)
        report.actions.append(Action(client.url, "verify", name, "answers"))
    for name in sorted(set(loaded) - set(desired) - keep):
        client.unload(name)
        report.actions.append(Action(client.url, "unload", name))


def _stage_everywhere(
    root: registry.Root, use_case: str, version: str, spec: VllmSpec
) -> list[Action]:
    """Load ``version`` under its pinned name on every replica and check that it answers.

    Resolver mode: write its pinned folder; the completion makes each replica resolve it. An
    adapter the servers cannot load (a rank above their --max-lora-rank) fails here, before
    production moves: rewritten into the stable folder, it would be loaded at the replica's
    next re-read inside the engine step, which takes the replica down (vLLM 0.32)."""
    name, actions, path = pinned_name(use_case, version), [], None
    if spec.mode == "resolver":
        if not spec.servers:
            return []
        if write_resolver_folder(root, use_case, spec, name, version):
            actions.append(Action(str(spec.resolver_dir), "write", name, version))
    else:
        path = stage_files(root, use_case, version, spec)
    for server in spec.servers:
        try:
            with VllmClient(server, timeout_s=spec.timeout_s, retries=spec.retries) as client:
                _check_base(client, spec)
                loaded = client.adapters()
                warn_slots(client.url, spec, len(loaded) + (name not in loaded))
                if path is not None and _serve_from(client, name, path, loaded.get(name)):
                    actions.append(Action(client.url, "load", name, f"from {path}"))
                client.complete(name, spec.verify_prompt, max_tokens=4)
                actions.append(Action(client.url, "verify", name, "answers"))
        except VllmError as exc:
            answered = path is None and exc.status in (400, 404)  # 400: loading it failed
            hint = f" (the resolver could not load {spec.resolver_dir}/{name})" if answered else ""
            raise DeployError(f"{name} failed on {exc}{hint}") from exc  # "{url}: {what}"
    return actions


def _serve_from(client: VllmClient, name: str, path: str, current: str | None) -> str | None:
    """Make ``name`` serve ``path`` (loaded now from ``current``); returns the op, None if none.

    A switch is unload + load, not ``load_inplace``: vLLM keeps that flag on the stored
    request, and every engine step serving ``name`` would re-read the adapter from disk
    (vllm-project/vllm#33791). If the new load fails, ``current`` is loaded back so the name
    is not left unserved.
    """
    if current == path:
        return None
    if current is None:
        client.load(name, path)
        return "load"
    client.unload(name)
    try:
        client.load(name, path)
    except VllmError:
        try:
            client.load(name, current)
        except VllmError as exc:  # the first error is the one to report
            log.warning("%s: could not load %s back from %s: %s", client.url, name, current, exc)
        raise
    return "switch"


def _require_keys(spec: VllmSpec) -> None:
    """Every replica's API key must be set before the first one is touched (no half rollout;
    resolver mode too: its promotion has every replica resolve the new pinned name)."""
    missing = sorted(
        {s.api_key_env for s in spec.servers if s.api_key_env and not os.environ.get(s.api_key_env)}
    )
    if missing:
        raise DeployError(
            f"API key environment variable(s) {', '.join(missing)} not set; no server was touched"
        )


def _check_base(client: VllmClient, spec: VllmSpec) -> None:
    """The replica must run the --model the recipe declares (adapters were checked against it)."""
    served = client.base_model_root()
    if served != spec.model:
        raise DeployError(
            f"{client.url} serves {served!r}, but register.vllm.model is {spec.model!r}"
        )


def preflight_version(root: registry.Root, use_case: str, version: str, target: BaseTarget) -> None:
    """A registered version against the serving settings of now (``target``), which may differ
    from those it was registered under (e.g. a lower ``max_lora_rank``); retired ones refused."""
    if version in registry.retired(root, use_case):
        raise registry.RegistryError(f"{use_case}/{version} is retired")
    preflight(registry.adapter_path(root, use_case, version), target)
