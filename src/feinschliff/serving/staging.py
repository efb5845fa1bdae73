"""Serving copies of registry versions: one immutable folder per version (runtime mode), and
the files of the resolver layout. Each is copied into a temp dir next to its destination, marked
complete and renamed into place, so a server never reads a half-written adapter."""

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
