"""The adapter registry: immutable versions, aliases moved by compare-and-swap, audit log.

Layout under the registry root::

    <use_case>/<version>/adapter/...        PEFT adapter files, copied after preflight
    <use_case>/<version>/manifest.json      lineage: recipe hash, base model, dataset, metrics, gate
    <use_case>/<version>/.complete          written last; a version without it does not exist
    <use_case>/aliases.json                 {"candidate": "v0002", "production": "v0001", ...}
    <use_case>/retired.json                 {"v0001": {"at", "by", "why"}}: never served again
    <use_case>/audit.jsonl                  append-only: who, when, why, alias, from -> to, gate

A version is built in a hidden temp directory and renamed into place (atomic on one
filesystem), so a writer killed half-way leaves only an invisible ``.vNNNN-*`` directory that the
next registration removes. Aliases change only under an exclusive lock and only if the caller's
expected current value still holds, so of two concurrent promotions exactly one wins.

An adapter is checked by :func:`feinschliff.serving.preflight.preflight` before anything is
written: a rejected adapter leaves the registry byte for byte as it was.

Storage: a local directory or a ``file://`` URL. Other fsspec schemes (s3://, gs://) are refused
by :func:`open_root`: alias compare-and-swap needs a lock that object stores do not offer.
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
from urllib.parse import urlparse

from feinschliff.artifacts import COMPLETE, AdapterRef, hash_tree, mark_complete, write_json
from feinschliff.models import feinschliff_home
from feinschliff.serving.preflight import BaseTarget, preflight

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
VERSION_RE = re.compile(r"^v\d{4,}$")
ALIASES = ("candidate", "production", "previous")
UNSET: Any = object()


class RegistryError(RuntimeError):
    """Invalid name, missing version, or a refused change."""


class InvalidName(RegistryError):
    """A use case or version name that is not safe as a path component."""


class AliasConflict(RegistryError):
    """The alias moved since the caller read it (a lost compare-and-swap)."""


def default_root() -> Path:
    return feinschliff_home() / "registry"


def open_root(location: str | Path | None) -> Path:
    """A registry location (path, ``file://`` URL or None for the default) as a local Path."""
    if location is None:
        return default_root()
    text = str(location)
    if "://" not in text:
        return Path(text).expanduser()
    url = urlparse(text)
    if url.scheme == "file":
        return Path(url.path)
    raise RegistryError(
        f"registry {text}: only local directories and file:// URLs are supported (alias "
        f"compare-and-swap needs a file lock); mount {url.scheme}:// storage (e.g. s3fs-fuse) "
        "and point the registry at the mount"
    )


def use_case_dir(root: Path, use_case: str) -> Path:
    if not NAME_RE.match(use_case or ""):
        raise InvalidName(f"invalid use case name {use_case!r}")
    return root / use_case


def version_dir(root: Path, use_case: str, version: str) -> Path:
    if not VERSION_RE.match(version or ""):
        raise InvalidName(f"invalid version {version!r} (expected v0001, v0002, ...)")
    return use_case_dir(root, use_case) / version


@contextmanager
def locked(uc_dir: Path, name: str = ".lock") -> Iterator[None]:
    """An exclusive lock on ``uc_dir/name``; the kernel drops it if the holder is killed."""
    uc_dir.mkdir(parents=True, exist_ok=True)
    with (uc_dir / name).open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def versions(root: Path, use_case: str) -> list[str]:
    uc = use_case_dir(root, use_case)
    if not uc.is_dir():
        return []
    found = [p.name for p in uc.iterdir() if VERSION_RE.match(p.name) and (p / COMPLETE).exists()]
    return sorted(found, key=lambda v: int(v[1:]))


def read_aliases(root: Path, use_case: str) -> dict[str, str]:
    path = use_case_dir(root, use_case) / "aliases.json"
    return json.loads(path.read_text()) if path.exists() else {}


def retired(root: Path, use_case: str) -> dict[str, Any]:
    path = use_case_dir(root, use_case) / "retired.json"
    return json.loads(path.read_text()) if path.exists() else {}


def manifest(root: Path, use_case: str, version: str) -> dict[str, Any]:
    vdir = version_dir(root, use_case, version)
    if not (vdir / COMPLETE).exists():
        raise RegistryError(f"{use_case}/{version} is not a registered version")
    return json.loads((vdir / "manifest.json").read_text())


def adapter_path(root: Path, use_case: str, version: str) -> Path:
    """The immutable adapter folder of a registered version."""
    manifest(root, use_case, version)  # raises for unknown or incomplete versions
    return version_dir(root, use_case, version) / "adapter"


def register_adapter(
    root: Path,
    use_case: str,
    adapter: AdapterRef,
    lineage: dict[str, Any],
    *,
    target: BaseTarget,
) -> str:
    """Preflight an adapter, then copy it into a new immutable version.

    Idempotent for the same adapter content (returns the existing version). Raises
    :class:`~feinschliff.serving.preflight.PreflightError` before writing anything.
    """
    uc = use_case_dir(root, use_case)
    src = adapter.dir / "adapter"
    report = preflight(src, target)
    adapter_sha = hash_tree(src)
    with locked(uc):
        for v in versions(root, use_case):
            if manifest(root, use_case, v).get("adapter_sha256") == adapter_sha:
                return v  # a rerun of the same training: no duplicate version
        _remove_stale_temps(uc)
        existing = [int(p.name[1:]) for p in uc.iterdir() if VERSION_RE.match(p.name)]
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
                    "adapter": {
                        "rank": report.rank,
                        "target_modules": report.target_modules,
                        "base_model_name_or_path": report.base_model,
                    },
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
    """Move one alias (compare-and-swap on ``expected`` when given). Returns the new aliases."""
    return _move(root, use_case, {alias: version}, expected={alias: expected}, why=why)


def promote(
    root: Path,
    use_case: str,
    version: str,
    *,
    why: str,
    expected: Any = UNSET,
    decision: Any = None,
) -> dict[str, str]:
    """production := version, previous := old production, in one locked compare-and-swap.

    ``expected`` is the production version the caller saw (None: none); by default the value
    read now. A production that moved meanwhile raises :class:`AliasConflict`.
    """
    uc = use_case_dir(root, use_case)
    current = read_aliases(root, use_case).get("production") if expected is UNSET else expected
    if current == version:
        with locked(uc):
            if read_aliases(root, use_case).get("production") == version:
                return read_aliases(root, use_case)
    moves: dict[str, str | None] = {"production": version}
    if current is not None:
        moves["previous"] = current
    aliases = _move(root, use_case, moves, expected={"production": current}, why=why)
    if decision is not None:
        _audit(uc, "gate", alias="production", old=current, new=version, why=why, decision=decision)
    return aliases


def rollback(root: Path, use_case: str, *, why: str, expected: Any = UNSET) -> dict[str, str]:
    """production := previous and previous := old production (compare-and-swap on both)."""
    aliases = read_aliases(root, use_case)
    current = aliases.get("production") if expected is UNSET else expected
    target = aliases.get("previous")
    if target is None:
        raise RegistryError(f"{use_case} has no previous version to roll back to")
    return _move(
        root,
        use_case,
        {"production": target, "previous": current},
        expected={"production": current, "previous": target},
        why=why or "rollback",
    )


def retire(root: Path, use_case: str, version: str, *, why: str) -> dict[str, str]:
    """Mark a version as never to be served again; drops candidate/previous aliases on it."""
    uc = use_case_dir(root, use_case)
    manifest(root, use_case, version)
    with locked(uc):
        aliases = read_aliases(root, use_case)
        if aliases.get("production") == version:
            raise RegistryError(f"{use_case}/{version} is production; promote or roll back first")
        gone = retired(root, use_case)
        gone[version] = {"at": _now(), "by": _who(), "why": why}
        write_json(uc / "retired.json", gone)
        _audit(uc, "retire", alias=None, old=version, new=None, why=why)
        for alias in [a for a, v in aliases.items() if v == version]:
            aliases.pop(alias)
            _audit(uc, "alias", alias=alias, old=version, new=None, why=f"{version} retired")
        write_json(uc / "aliases.json", aliases)
    return aliases


def production_history(root: Path, use_case: str) -> list[str]:
    """Versions that were production, most recent first, without repeats or retired ones."""
    gone = retired(root, use_case)
    seen: list[str] = []
    current = read_aliases(root, use_case).get("production")
    if current:
        seen.append(current)
    for entry in reversed(audit_log(root, use_case)):
        v = entry.get("new")
        moved = entry.get("event") == "alias" and entry.get("alias") == "production"
        if moved and v and v not in seen and v not in gone:
            seen.append(v)
    return seen


def audit_log(root: Path, use_case: str) -> list[dict[str, Any]]:
    path = use_case_dir(root, use_case) / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def production_adapter(root: Path, use_case: str) -> AdapterRef | None:
    version = read_aliases(root, use_case).get("production")
    if version is None:
        return None
    vdir = version_dir(root, use_case, version)
    return AdapterRef(path=str(vdir), sha256=json.loads((vdir / COMPLETE).read_text())["sha256"])


def list_registry(root: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not root.is_dir():
        return rows
    for uc in sorted(p for p in root.iterdir() if p.is_dir() and NAME_RE.match(p.name)):
        aliases = read_aliases(root, uc.name)
        gone = retired(root, uc.name)
        for v in versions(root, uc.name):
            m = manifest(root, uc.name, v)
            rows.append(
                {
                    "use_case": uc.name,
                    "version": v,
                    "aliases": [a for a, target in aliases.items() if target == v]
                    + (["retired"] if v in gone else []),
                    "created_at": m.get("created_at"),
                    "method": m.get("train", {}).get("method"),
                    "gate": m.get("gate", {}).get("promote"),
                    "adapter_sha256": m["adapter_sha256"][:12],
                }
            )
    return rows


def _move(
    root: Path,
    use_case: str,
    moves: dict[str, str | None],
    *,
    expected: dict[str, Any],
    why: str,
) -> dict[str, str]:
    """Apply alias moves atomically under the lock after checking every expectation."""
    uc = use_case_dir(root, use_case)
    for alias in moves:
        if alias not in ALIASES:
            raise RegistryError(f"unknown alias {alias!r}; aliases are {ALIASES}")
    with locked(uc):
        known, gone = versions(root, use_case), retired(root, use_case)
        for alias, version in moves.items():
            if version is not None and version not in known:
                raise RegistryError(f"{use_case}/{version} is not a registered version")
            if version is not None and version in gone and alias != "previous":
                raise RegistryError(f"{use_case}/{version} is retired")
        aliases = read_aliases(root, use_case)
        for alias, want in expected.items():
            if want is not UNSET and aliases.get(alias) != want:
                raise AliasConflict(
                    f"{use_case}:{alias} is {aliases.get(alias)}, expected {want} "
                    "(changed by someone else; re-read and retry)"
                )
        old = dict(aliases)
        for alias, version in moves.items():
            if version is None:
                aliases.pop(alias, None)
            else:
                aliases[alias] = version
        write_json(uc / "aliases.json", aliases)
        for alias, version in moves.items():
            if old.get(alias) != version:
                _audit(uc, "alias", alias=alias, old=old.get(alias), new=version, why=why)
    return aliases


def _remove_stale_temps(uc: Path) -> None:
    """Temp dirs of killed writers (only called under the lock, so none is in use)."""
    for p in uc.iterdir():
        if p.is_dir() and p.name.startswith(".v") and "-" in p.name:
            shutil.rmtree(p, ignore_errors=True)


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


def record_event(root: Path, use_case: str, event: str, **fields: Any) -> None:
    """Append a non-alias event (e.g. a human approval decision) to the use case's audit log."""
    uc = use_case_dir(root, use_case)
    uc.mkdir(parents=True, exist_ok=True)
    with locked(uc):
        _audit(uc, event, **fields)
