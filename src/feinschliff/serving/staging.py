"""Serving copies of registry versions: one immutable folder per version (runtime mode), and
the resolver layout, one folder per served name (resolver mode; see
:mod:`feinschliff.serving.deploy` for why and when a server picks it up). Each is copied into a
temp dir next to its destination, marked complete and renamed into place, so a server never
reads a half-written adapter. Served names: ``<use_case>`` (production) and
``<use_case>@<version>`` (pinned).

A killed copy (SIGKILL, or SIGTERM, which runs no ``finally``) leaves its temp dir behind: the
next copy into the same folder removes those whose writer is gone (:func:`sweep_leftovers`), so a
long-lived serving volume does not fill up with half-copied adapters."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from feinschliff import registry
from feinschliff.artifacts import COMPLETE, completed_hash, mark_complete
from feinschliff.models import feinschliff_home
from feinschliff.specs.register import VllmSpec

log = logging.getLogger(__name__)
PIN = "@"
# A temp dir left for longer than this by a writer on another machine is a leftover: a copy
# takes seconds to minutes, and a writer still alive there cannot be asked.
STALE_S = 6 * 3600
# Even a dead writer's temp dir is left this long: a process in another PID namespace on the
# same host (a pod with hostNetwork) looks dead from here while it is still writing.
SETTLE_S = 120
# ".<dest>~tmp~<host>~<pid>~<random>" (a copy) or "...~old~..." (a replaced folder being removed)
LEFTOVER_RE = re.compile(r"^\.(?P<dest>.+)~(?:tmp|old)~(?P<host>[0-9a-f]{12})~(?P<pid>\d+)~")
# What feinschliff wrote before: ".<dest>-<mkdtemp's 8 chars>" and ".<dest>-old-<pid>", for a
# dest that is a version's serving folder (v0003-<sha12>) or a pinned resolver name.
LEGACY_RE = re.compile(r"^\.(?:v\d{4,}-[0-9a-f]{12}|.+@v\d{4,})-(?:old-\d+|[a-z0-9_]{8})$")


def pinned_name(use_case: str, version: str) -> str:
    """The served name of one kept version: ``support-de@v0003``."""
    return f"{use_case}{PIN}{version}"


def is_managed(name: str, use_case: str) -> bool:
    """Names feinschliff manages on a server and in the resolver folder (the stable name and
    its pinned versions; other adapters there are left alone)."""
    return name == use_case or (
        name.startswith(use_case + PIN) and registry.VERSION_RE.match(name[len(use_case) + 1 :])
    )


def warn_slots(url: str, spec: VllmSpec, count: int) -> None:
    """Warn when a server will use every one of its ``max_loras`` slots (its --max-loras),
    counting every use case on it: the per-recipe check cannot see the others, and on vLLM CPU,
    with every slot used, an adapter can be applied to base-model requests (vLLM PRs #48421
    and #49656). Only a warning: on GPU vLLM more adapters than slots just swap in and out."""
    if count >= spec.max_loras:
        log.warning(
            "%s: %d adapters loaded (all use cases on this server) once this load is done, "
            "every slot of register.vllm.max_loras=%d (the server's --max-loras) or more: on "
            "vLLM CPU an adapter can then leak into base-model requests. Set --max-loras and "
            "register.vllm.max_loras to the sum of keep_versions + 1 over the use cases "
            "sharing this server, plus one spare (at least %d here)",
            url,
            count,
            spec.max_loras,
            count + 1,
        )


def stage_files(root: registry.Root, use_case: str, version: str, spec: VllmSpec) -> str:
    """Copy a registry version to its own serving path; returns that path as servers see it."""
    base = Path(spec.adapter_dir) if spec.adapter_dir else feinschliff_home() / "serving"
    # The content hash in the name: another registry's (or a recreated registry's) v0001 of
    # the same use case can never be mistaken for this one.
    sha = registry.adapter_sha256(root, use_case, version)
    leaf = f"{version}-{sha[:12]}"
    dest = base / use_case / leaf
    if completed_hash(dest) is None:
        copy_complete(registry.adapter_path(root, use_case, version), dest, version, sha)
    server_base = spec.server_adapter_dir or str(base)
    return f"{server_base.rstrip('/')}/{use_case}/{leaf}"


def copy_complete(
    src: Path, dest: Path, version: str, sha: str, base_model: str | None = None
) -> None:
    """Copy into a temp dir next to ``dest``, mark complete, swap in (old one removed after).

    Not under a lock (``serve-config`` copies too): when another writer completed ``dest`` with
    the same content meanwhile, that copy is kept and this one dropped, so a path a replica may
    be loading from is not swapped out for an identical one (it would be missing in between).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(dest.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_scratch_prefix(dest, "tmp"), dir=dest.parent))
    try:
        # shutil.copy, not copy2: the copy's files get their own mtimes, so the sweep of
        # another writer sees this copy's activity, not the (maybe old) registry version's age
        shutil.copytree(src, tmp, copy_function=shutil.copy, dirs_exist_ok=True, symlinks=False)
        os.utime(tmp)  # copytree gave it the source's mtime (copystat)
        if base_model is not None:
            cfg_path = tmp / "adapter_config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["base_model_name_or_path"] = base_model
            # vLLM's filesystem resolver reads cfg["peft_type"] without a default (KeyError);
            # PEFT always writes it, preflight accepts it missing (vLLM's loader defaults LORA)
            cfg.setdefault("peft_type", "LORA")
            cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        digest = mark_complete(tmp, version=version, adapter_sha256=sha, base_model=base_model)
        if completed_hash(dest) == digest:  # another writer's identical copy
            shutil.rmtree(tmp, ignore_errors=True)
        elif dest.exists():
            old = Path(tempfile.mkdtemp(prefix=_scratch_prefix(dest, "old"), dir=dest.parent))
            os.rename(dest, old / dest.name)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sweep_leftovers(folder: Path, *, now: float | None = None) -> list[Path]:
    """Remove temp dirs that killed copies left in ``folder``; returns what was removed.

    One is a leftover when its writer ran on this machine and is gone (for ``SETTLE_S``), or,
    unless that writer is alive here, when nothing in it changed for ``STALE_S`` (a writer on
    another machine sharing the volume, or a name written by an older feinschliff without host
    and pid). Other hidden folders are never touched.
    """
    now = time.time() if now is None else now
    removed = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not path.name.startswith(".") or not path.is_dir() or path.is_symlink():
            continue
        m = LEFTOVER_RE.match(path.name)
        if m is None and not LEGACY_RE.match(path.name):
            continue
        idle = _idle_s(path, now)
        here = m is not None and m["host"] == _host_id()
        alive = m is not None and here and _alive(int(m["pid"]))
        if (here and not alive and idle > SETTLE_S) or (not alive and idle > STALE_S):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _scratch_prefix(dest: Path, kind: str) -> str:
    return f".{dest.name}~{kind}~{_host_id()}~{os.getpid()}~"


def _host_id() -> str:
    """This machine, as a temp dir's name carries it (a hostname may hold ``~`` or dots)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _idle_s(path: Path, now: float) -> float:
    """Seconds since anything in ``path`` last changed (a running copy keeps writing files)."""
    try:
        newest = max(
            (p.lstat().st_mtime for p in [path, *path.rglob("*")]), default=path.lstat().st_mtime
        )
    except OSError:  # removed meanwhile
        return 0.0
    return now - newest


def resolver_loadable(path: Path) -> bool:
    """A resolver folder written before peft_type was added is rewritten once."""
    try:
        return "peft_type" in json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return False


def read_marker(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / COMPLETE).read_text())
    except (OSError, ValueError):
        return {}


def write_resolver_folder(
    root: registry.Root, use_case: str, spec: VllmSpec, name: str, version: str
) -> bool:
    """``<resolver_dir>/<name>/`` holding ``version``; returns False if it already did."""
    dest = Path(spec.resolver_dir or "") / name
    sha = registry.adapter_sha256(root, use_case, version)
    # The base model too: the resolver loads only if it equals the server's --model.
    marker = read_marker(dest)
    current = (marker.get("adapter_sha256"), marker.get("base_model")) == (sha, spec.model)
    if current and completed_hash(dest) is not None and resolver_loadable(dest):
        return False
    src = registry.adapter_path(root, use_case, version)
    copy_complete(src, dest, version, sha, base_model=spec.model)
    return True


def write_resolver_layout(
    root: registry.Root,
    use_case: str,
    spec: VllmSpec,
    desired: dict[str, str],
    keep: set[str],
    release: Callable[[str], list[str]] | None = None,
) -> list[tuple[str, str, str]]:
    """<resolver_dir>/<name>/ per desired name (served name -> version), base_model_name_or_path
    = the --model string; managed folders neither desired nor in ``keep`` are removed.
    Returns what changed: (op, name, detail) with op "write" (detail: the version), "remove",
    or "keep" (detail: why a folder to remove stays).

    A server keeps a resolved adapter registered by its path until it restarts, and re-reads
    that path whenever the adapter was evicted from its CPU cache (``--max-cpu-loras``); with
    the folder gone that read fails inside the engine step and takes the replica down (vLLM
    0.32 ``LRUCacheWorkerLoRAManager.add_adapter``). So ``release(name)`` first unloads the
    name on every server (returning those it could not); only then is the folder moved aside
    (no new resolve finds it), released once more and deleted. Where a server could not
    unload it, the folder stays (op "keep") and the next reconcile tries again.
    """
    done: list[tuple[str, str, str]] = []
    rdir = Path(spec.resolver_dir or "")
    rdir.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(rdir)
    for name, version in sorted(desired.items()):
        if write_resolver_folder(root, use_case, spec, name, version):
            done.append(("write", name, version))
    for stale in sorted(p for p in rdir.iterdir() if is_managed(p.name, use_case)):
        if stale.name in desired or stale.name in keep:
            continue
        failed = release(stale.name) if release is not None else []
        if not failed:
            parked = Path(tempfile.mkdtemp(prefix=_scratch_prefix(stale, "old"), dir=rdir))
            os.rename(stale, parked / stale.name)
            # once more: a request between the first unload and the move resolved it again
            failed = release(stale.name) if release is not None else []
            if not failed:
                shutil.rmtree(parked)
                done.append(("remove", stale.name, ""))
                continue
            os.rename(parked / stale.name, stale)
            parked.rmdir()
        reason = "not removed, a server may still read it: " + "; ".join(failed)
        done.append(("keep", stale.name, reason))
    return done
