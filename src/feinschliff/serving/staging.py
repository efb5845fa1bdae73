"""Serving copies of registry versions: one immutable folder per version (runtime mode), and
the resolver layout, one folder per served name (resolver mode; see
:mod:`feinschliff.serving.deploy` for why and when a server picks it up). Each is copied into a
temp dir next to its destination, marked complete and renamed into place, so a server never
reads a half-written adapter. Served names: ``<use_case>`` (production) and
``<use_case>@<version>`` (pinned)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from feinschliff import registry
from feinschliff.artifacts import COMPLETE, completed_hash, mark_complete
from feinschliff.models import feinschliff_home
from feinschliff.specs.register import VllmSpec

PIN = "@"


def pinned_name(use_case: str, version: str) -> str:
    """The served name of one kept version: ``support-de@v0003``."""
    return f"{use_case}{PIN}{version}"


def is_managed(name: str, use_case: str) -> bool:
    """Names feinschliff manages on a server and in the resolver folder (the stable name and
    its pinned versions; other adapters there are left alone)."""
    return name == use_case or (
        name.startswith(use_case + PIN) and registry.VERSION_RE.match(name[len(use_case) + 1 :])
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
    """Copy into a temp dir next to ``dest``, mark complete, swap in (old one removed after)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True, symlinks=False)
        if base_model is not None:
            cfg_path = tmp / "adapter_config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["base_model_name_or_path"] = base_model
            # vLLM's filesystem resolver reads cfg["peft_type"] without a default (KeyError);
            # PEFT always writes it, preflight accepts it missing (vLLM's loader defaults LORA)
            cfg.setdefault("peft_type", "LORA")
            cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        mark_complete(tmp, version=version, adapter_sha256=sha, base_model=base_model)
        if dest.exists():
            old = dest.with_name(f".{dest.name}-old-{os.getpid()}")
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


def write_resolver_layout(
    root: registry.Root,
    use_case: str,
    spec: VllmSpec,
    desired: dict[str, str],
    keep: set[str],
) -> list[tuple[str, str, str]]:
    """<resolver_dir>/<name>/ per desired name (served name -> version), base_model_name_or_path
    = the --model string; managed folders neither desired nor in ``keep`` are removed.
    Returns what changed: (op, name, detail) with op "write" (detail: the version) or "remove"."""
    done: list[tuple[str, str, str]] = []
    rdir = Path(spec.resolver_dir or "")
    rdir.mkdir(parents=True, exist_ok=True)
    for name, version in sorted(desired.items()):
        dest = rdir / name
        sha = registry.adapter_sha256(root, use_case, version)
        # The base model too: the resolver loads only if it equals the server's --model.
        marker = read_marker(dest)
        current = (marker.get("adapter_sha256"), marker.get("base_model")) == (sha, spec.model)
        if current and completed_hash(dest) is not None and resolver_loadable(dest):
            continue
        src = registry.adapter_path(root, use_case, version)
        copy_complete(src, dest, version, sha, base_model=spec.model)
        done.append(("write", name, version))
    for stale in sorted(p for p in rdir.iterdir() if is_managed(p.name, use_case)):
        if stale.name not in desired and stale.name not in keep:
            shutil.rmtree(stale)
            done.append(("remove", stale.name, ""))
    return done
