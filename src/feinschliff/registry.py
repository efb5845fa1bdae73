"""A local adapter registry: immutable versions, aliases moved by compare-and-swap, audit log.

Layout under the registry root::

    <use_case>/<version>/adapter/...        PEFT adapter files, copied
    <use_case>/<version>/manifest.json      lineage: recipe hash, base model, dataset, metrics, gate
    <use_case>/<version>/.complete          written last; a version without it does not exist
    <use_case>/aliases.json                 {"candidate": "v0002", "production": "v0001", ...}
    <use_case>/audit.jsonl                  append-only: who, when, why, alias, from -> to

A version is built in a hidden temp directory and renamed into place (atomic on one
filesystem). Aliases change only under an exclusive lock and only if the caller's expected
current value still holds, so two concurrent promotions cannot both win.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from feinschliff.artifacts import COMPLETE, AdapterRef, hash_tree, mark_complete, write_json
from feinschliff.models import feinschliff_home

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ALIASES = ("candidate", "production", "previous")
UNSET = object()


class RegistryError(RuntimeError):
    """Invalid name, missing version, or a lost compare-and-swap."""


class AliasConflict(RegistryError):
    """The alias moved since the caller read it."""


def default_root() -> Path:
    return feinschliff_home() / "registry"


def _use_case_dir(root: Path, use_case: str) -> Path:
    if not NAME_RE.match(use_case):
        raise RegistryError(f"invalid use case name {use_case!r}")
    return root / use_case


@contextmanager
def _locked(uc_dir: Path) -> Iterator[None]:
    uc_dir.mkdir(parents=True, exist_ok=True)
    with (uc_dir / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def versions(root: Path, use_case: str) -> list[str]:
    uc = _use_case_dir(root, use_case)
    if not uc.is_dir():
        return []
    found = [p.name for p in uc.iterdir() if p.name.startswith("v") and (p / COMPLETE).exists()]
    return sorted(found, key=lambda v: int(v[1:]))


def read_aliases(root: Path, use_case: str) -> dict[str, str]:
    path = _use_case_dir(root, use_case) / "aliases.json"
    return json.loads(path.read_text()) if path.exists() else {}


def manifest(root: Path, use_case: str, version: str) -> dict[str, Any]:
    path = _use_case_dir(root, use_case) / version / "manifest.json"
    if not (path.parent / COMPLETE).exists():
        raise RegistryError(f"{use_case}/{version} is not a registered version")
    return json.loads(path.read_text())


def register_adapter(
    root: Path, use_case: str, adapter: AdapterRef, lineage: dict[str, Any]
) -> str:
    """Copy an adapter into a new immutable version; idempotent for the same adapter content."""
    uc = _use_case_dir(root, use_case)
    src = adapter.dir / "adapter"
    if not (src / "adapter_config.json").exists():
        raise RegistryError(f"{src} is not a PEFT adapter (no adapter_config.json)")
    adapter_sha = hash_tree(src)
    with _locked(uc):
        for v in versions(root, use_case):
            if manifest(root, use_case, v).get("adapter_sha256") == adapter_sha:
                return v  # a rerun of the same training: no duplicate version
        existing = [int(p.name[1:]) for p in uc.iterdir() if re.match(r"^v\d+$", p.name)]
        version = f"v{max(existing, default=0) + 1:04d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=uc))
        try:
            shutil.copytree(src, tmp / "adapter", symlinks=False)
            write_json(
                tmp / "manifest.json",
                {
                    "use_case": use_case,
                    "version": version,
                    "adapter_sha256": adapter_sha,
                    "source_adapter_ref": adapter.model_dump(),
                    "created_at": _now(),
                    "created_by": _who(),
                    **lineage,
                },
            )
            mark_complete(tmp, stage="registry")
            os.rename(tmp, uc / version)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _audit(uc, "register", alias=None, old=None, new=version, why="registered")
    return version


def set_alias(
    root: Path,
    use_case: str,
    alias: str,
    version: str | None,
    *,
    expected: Any = UNSET,
    why: str = "",
) -> dict[str, str]:
    """Move an alias (compare-and-swap on ``expected`` when given). Returns the new aliases."""
    if alias not in ALIASES:
        raise RegistryError(f"unknown alias {alias!r}; aliases are {ALIASES}")
    uc = _use_case_dir(root, use_case)
    with _locked(uc):
        if version is not None and version not in versions(root, use_case):
            raise RegistryError(f"{use_case}/{version} is not a registered version")
        aliases = read_aliases(root, use_case)
        current = aliases.get(alias)
        if expected is not UNSET and current != expected:
            raise AliasConflict(f"{use_case}:{alias} is {current}, expected {expected}")
        if version is None:
            aliases.pop(alias, None)
        else:
            aliases[alias] = version
        write_json(uc / "aliases.json", aliases)
        _audit(uc, "alias", alias=alias, old=current, new=version, why=why)
    return aliases


def promote(
    root: Path, use_case: str, version: str, *, why: str, decision: Any = None
) -> dict[str, str]:
    """production := version, previous := old production (CAS on the production alias)."""
    current = read_aliases(root, use_case).get("production")
    if current == version:
        return read_aliases(root, use_case)
    set_alias(root, use_case, "production", version, expected=current, why=why)
    if current is not None:
        set_alias(root, use_case, "previous", current, why=f"superseded by {version}")
    if decision is not None:
        _audit(
            _use_case_dir(root, use_case),
            "gate",
            alias="production",
            old=current,
            new=version,
            why=why,
            decision=decision,
        )
    return read_aliases(root, use_case)


def production_adapter(root: Path, use_case: str) -> AdapterRef | None:
    version = read_aliases(root, use_case).get("production")
    if version is None:
        return None
    vdir = _use_case_dir(root, use_case) / version
    return AdapterRef(path=str(vdir), sha256=json.loads((vdir / COMPLETE).read_text())["sha256"])


def list_registry(root: Path) -> list[dict[str, Any]]:
    rows = []
    if not root.is_dir():
        return rows
    for uc in sorted(p for p in root.iterdir() if p.is_dir() and NAME_RE.match(p.name)):
        aliases = read_aliases(root, uc.name)
        for v in versions(root, uc.name):
            m = manifest(root, uc.name, v)
            rows.append(
                {
                    "use_case": uc.name,
                    "version": v,
                    "aliases": [a for a, target in aliases.items() if target == v],
                    "created_at": m.get("created_at"),
                    "method": m.get("train", {}).get("method"),
                    "gate": m.get("gate", {}).get("promote"),
                    "adapter_sha256": m["adapter_sha256"][:12],
                }
            )
    return rows


def _audit(uc: Path, event: str, **fields: Any) -> None:
    entry = {"at": _now(), "by": _who(), "event": event, **fields}
    with (uc / "audit.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _who() -> str:
    try:
        return os.environ.get("FEINSCHLIFF_USER") or getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"
