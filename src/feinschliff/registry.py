"""The adapter registry: immutable versions, aliases moved by compare-and-swap, audit log.

Layout under the registry root::

    <use_case>/<version>/adapter/...        PEFT adapter files, copied after preflight
    <use_case>/<version>/manifest.json      lineage: recipe hash, base model, dataset, metrics, gate
    <use_case>/<version>/.complete          written last; a version without it does not exist
    <use_case>/aliases.json                 {"candidate": "v0002", "production": "v0001", ...}
    <use_case>/retired.json                 {"v0001": {"at", "by", "why"}}: never served again
    <use_case>/audit.jsonl                  append-only: who, when, why, alias, from -> to, gate

The root is a local directory (default ``$FEINSCHLIFF_HOME/registry``) or any fsspec URL
(``s3://bucket/registry``, ``memory://...``): :mod:`feinschliff.registry_store` says how each
store keeps versions immutable (invisible until their ``.complete`` marker, leftovers of killed
writers removed by the next one) and locks safe. Aliases change only under the use case's lock
and only if the caller's expected value still holds when re-read under it, so of two concurrent
promotions exactly one wins; the audit log is appended under the same lock.

Preflight (:func:`feinschliff.serving.preflight.preflight`) runs before anything is written: a
rejected adapter leaves the registry byte for byte as it was. A version of a remote registry is
materialised into a local cache, keyed by its content hash, wherever a folder is needed
(preflight, vLLM, warm start).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from feinschliff.artifacts import COMPLETE, AdapterRef, completed_hash, hash_tree, mark_complete
from feinschliff.artifacts import write_json as write_json
from feinschliff.models import feinschliff_home
from feinschliff.registry_store import (
    AliasConflict,
    FsspecStore,
    InvalidName,
    Lease,
    LocalStore,
    LockLost,
    LockTimeout,
    RegistryError,
    Root,
    default_root,
    location,
    materialise,
    open_root,
    store_of,
    who,
)
from feinschliff.serving.preflight import BaseTarget, preflight

__all__ = [  # re-exported: callers use feinschliff.registry only
    "AliasConflict",
    "InvalidName",
    "LockLost",
    "LockTimeout",
    "RegistryError",
    "Root",
    "default_root",
    "location",
    "open_root",
    "store_of",
]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
VERSION_RE = re.compile(r"^v\d{4,}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
ALIASES = ("candidate", "production", "previous")
UNSET: Any = object()

log = logging.getLogger(__name__)


def _uc(use_case: str) -> str:
    if not NAME_RE.match(use_case or ""):
        raise InvalidName(f"invalid use case name {use_case!r}")
    return use_case


def _vrel(use_case: str, version: str) -> str:
    if not VERSION_RE.match(version or ""):
        raise InvalidName(f"invalid version {version!r} (expected v0001, v0002, ...)")
    return f"{_uc(use_case)}/{version}"


def use_case_dir(root: Root, use_case: str) -> Path | str:
    """The use case's folder: a Path for local roots, a URL for remote ones."""
    rel = _uc(use_case)
    return root / rel if isinstance(root, Path) else f"{root.url}/{rel}"


def has_use_case(root: Root, use_case: str) -> bool:
    """Whether the registry holds the use case (on object stores: once it holds a file).
    Checked before taking a lock, which would create the folder of a mistyped root."""
    return store_of(root).exists(_uc(use_case))


def version_dir(root: Root, use_case: str, version: str) -> Path | str:
    rel = _vrel(use_case, version)
    return root / rel if isinstance(root, Path) else f"{root.url}/{rel}"


@contextmanager
def lock(root: Root, use_case: str, name: str = ".lock") -> Iterator[Lease]:
    """The use case's exclusive lock ``name`` on whatever store holds the registry."""
    with store_of(root).lock(f"{_uc(use_case)}/{name}") as lease:
        yield lease


def _read_json(root: Root, rel: str) -> Any:
    data = store_of(root).read_bytes(rel)
    return None if data is None else json.loads(data)


def _write_json(root: Root, rel: str, data: Any) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    store_of(root).write_bytes(rel, text.encode("utf-8"))


def versions(root: Root, use_case: str) -> list[str]:
    """Complete versions, oldest first (a folder without its marker is not a version)."""
    st, uc = store_of(root), _uc(use_case)
    found = [n for n in st.listdir(uc) if VERSION_RE.match(n) and st.exists(f"{uc}/{n}/{COMPLETE}")]
    return sorted(found, key=lambda v: int(v[1:]))


def read_aliases(root: Root, use_case: str) -> dict[str, str]:
    return _read_json(root, f"{_uc(use_case)}/aliases.json") or {}


def retired(root: Root, use_case: str) -> dict[str, Any]:
    return _read_json(root, f"{_uc(use_case)}/retired.json") or {}


def manifest(root: Root, use_case: str, version: str) -> dict[str, Any]:
    rel = _vrel(use_case, version)
    if not store_of(root).exists(f"{rel}/{COMPLETE}"):
        raise RegistryError(f"{use_case}/{version} is not a registered version")
    return _read_json(root, f"{rel}/manifest.json")


def local_version(root: Root, use_case: str, version: str) -> Path:
    """A registered version as a local folder (adapter/, manifest.json, .complete).

    Local roots: the version itself. Remote roots: a copy in
    ``$FEINSCHLIFF_HOME/registry-cache/<use_case>/<version>-<sha12>/``, keyed by the adapter's
    content hash and checked against the version's marker (a rerun reuses it).
    """
    m = manifest(root, use_case, version)  # raises for unknown or incomplete versions
    rel = _vrel(use_case, version)
    st = store_of(root)
    here = st.local_dir(rel)
    if here is not None:
        return here
    marker = json.loads(st.read_bytes(f"{rel}/{COMPLETE}") or b"{}")
    cache = feinschliff_home() / "registry-cache"
    dest = cache / use_case / f"{version}-{checked_sha256(m, use_case, version)[:12]}"
    if not dest.resolve().is_relative_to(cache.resolve()):  # e.g. a symlinked use-case folder
        raise RegistryError(f"{use_case}/{version}: cache folder {dest} is outside {cache}")
    if completed_hash(dest) != marker.get("sha256"):
        materialise(st, rel, dest, marker.get("sha256"))
    return dest


def checked_sha256(m: dict[str, Any], use_case: str, version: str) -> str:
    """The manifest's ``adapter_sha256``, refused unless it is 64 hex digits.

    It names local folders (registry cache, serving paths), and a remote manifest is
    written by whoever can write the bucket: ``"/../../x"`` would put them anywhere.
    """
    sha = m.get("adapter_sha256")
    if not isinstance(sha, str) or not SHA256_RE.match(sha):
        raise RegistryError(
            f"{use_case}/{version}: manifest adapter_sha256 {str(sha)[:80]!r} is not a "
            "sha256 hex digest (tampered manifest?)"
        )
    return sha


def adapter_sha256(root: Root, use_case: str, version: str) -> str:
    """A registered version's adapter content hash, checked (safe in a folder name)."""
    return checked_sha256(manifest(root, use_case, version), use_case, version)


def version_hash(root: Root, use_case: str, version: str) -> str | None:
    """The hash of a version's marker, as ``version_adapter(...).sha256`` (what evaluate
    reports record for production), read without materialising a remote version."""
    marker = store_of(root).read_bytes(f"{_vrel(use_case, version)}/{COMPLETE}")
    return None if marker is None else json.loads(marker).get("sha256")


def adapter_path(root: Root, use_case: str, version: str) -> Path:
    """The immutable adapter folder of a registered version (a local copy for remote roots)."""
    return local_version(root, use_case, version) / "adapter"


def register_adapter(
    root: Root,
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
    uc = _uc(use_case)
    st = store_of(root)
    src = adapter.dir / "adapter"
    report = preflight(src, target)
    adapter_sha = hash_tree(src)
    with st.lock(f"{uc}/.lock") as lease:
        for v in versions(root, use_case):
            if manifest(root, use_case, v).get("adapter_sha256") == adapter_sha:
                return v  # a rerun of the same training: no duplicate version
        # numbered before leftovers go: a stalled writer still copying into its folder must
        # not share a number with this one
        existing = [int(n[1:]) for n in st.listdir(uc) if VERSION_RE.match(n)]
        version = f"v{max(existing, default=0) + 1:04d}"
        _remove_stale_temps(st, uc)

        def fill(tmp: Path) -> None:
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
                    "created_by": who(),
                    **lineage,
                },
            )
            mark_complete(tmp, stage="registry")

        # the version becomes visible only while we still hold the lock
        st.write_version(uc, version, fill, commit=lease.check)
        _audit(st, uc, "register", alias=None, old=None, new=version, why="registered")
    return version


def set_alias(
    root: Root,
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
    root: Root,
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
    current = read_aliases(root, use_case).get("production") if expected is UNSET else expected
    if current == version:
        with lock(root, use_case) as lease:
            aliases = read_aliases(root, use_case)
            if aliases.get("production") == version:
                if decision is not None:  # no move, but the gate's decision is still recorded
                    lease.check()
                    gate = {"alias": "production", "old": version, "new": version}
                    _audit(
                        store_of(root), _uc(use_case), "gate", why=why, **gate, decision=decision
                    )
                return aliases
    moves: dict[str, str | None] = {"production": version}
    if current is not None:
        moves["previous"] = current
    gate = None
    if decision is not None:
        gate = {"alias": "production", "old": current, "new": version, "decision": decision}
    return _move(root, use_case, moves, expected={"production": current}, why=why, gate=gate)


def rollback(
    root: Root,
    use_case: str,
    *,
    why: str,
    expected: Any = UNSET,
    expected_previous: Any = UNSET,
) -> dict[str, str]:
    """production := previous and previous := old production (compare-and-swap on both).

    ``expected_previous``: the version the caller rolls back to (e.g. the one it loaded on the
    servers); by default the one read now.
    """
    aliases = read_aliases(root, use_case)
    current = aliases.get("production") if expected is UNSET else expected
    target = aliases.get("previous") if expected_previous is UNSET else expected_previous
    if target is None:
        raise RegistryError(f"{use_case} has no previous version to roll back to")
    return _move(
        root,
        use_case,
        {"production": target, "previous": current},
        expected={"production": current, "previous": target},
        why=why or "rollback",
    )


def retire(root: Root, use_case: str, version: str, *, why: str) -> dict[str, str]:
    """Mark a version as never to be served again; drops candidate/previous aliases on it."""
    st, uc = store_of(root), _uc(use_case)
    manifest(root, use_case, version)
    with st.lock(f"{uc}/.lock") as lease:
        aliases = read_aliases(root, use_case)
        if aliases.get("production") == version:
            raise RegistryError(f"{use_case}/{version} is production; promote or roll back first")
        gone = retired(root, use_case)
        gone[version] = {"at": _now(), "by": who(), "why": why}
        lease.check()
        _write_json(st, f"{uc}/retired.json", gone)
        _audit(st, uc, "retire", alias=None, old=version, new=None, why=why)
        for alias in [a for a, v in aliases.items() if v == version]:
            aliases.pop(alias)
            _audit(st, uc, "alias", alias=alias, old=version, new=None, why=f"{version} retired")
        _write_json(st, f"{uc}/aliases.json", aliases)
    return aliases


def production_history(root: Root, use_case: str) -> list[str]:
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


def audit_log(root: Root, use_case: str) -> list[dict[str, Any]]:
    data = store_of(root).read_bytes(f"{_uc(use_case)}/audit.jsonl")
    if data is None:
        return []
    entries = []
    for n, line in enumerate(data.decode("utf-8", errors="replace").split("\n"), start=1):
        try:
            entries.append(json.loads(line)) if line else None
        except ValueError:  # torn by a kill mid-append: skipped, not fatal for the registry
            log.warning("%s audit.jsonl line %d is unreadable (torn write?): skipped", use_case, n)
    return entries


def production_adapter(root: Root, use_case: str) -> AdapterRef | None:
    """The production version as a local AdapterRef (materialised for remote roots)."""
    version = read_aliases(root, use_case).get("production")
    return None if version is None else version_adapter(root, use_case, version)


def version_adapter(root: Root, use_case: str, version: str) -> AdapterRef:
    """A registered version as a local AdapterRef (materialised for remote roots)."""
    vdir = local_version(root, use_case, version)
    return AdapterRef(path=str(vdir), sha256=json.loads((vdir / COMPLETE).read_text())["sha256"])


def list_registry(root: Root) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    st = store_of(root)
    for name in st.listdir(""):
        if not NAME_RE.match(name) or not st.isdir(name):
            continue
        aliases = read_aliases(root, name)
        gone = retired(root, name)
        for v in versions(root, name):
            m = manifest(root, name, v)
            rows.append(
                {
                    "use_case": name,
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


def record_event(root: Root, use_case: str, event: str, **fields: Any) -> None:
    """Append a non-alias event (e.g. a human approval decision) to the use case's audit log."""
    st, uc = store_of(root), _uc(use_case)
    with st.lock(f"{uc}/.lock") as lease:
        lease.check()
        _audit(st, uc, event, **fields)


def _move(
    root: Root,
    use_case: str,
    moves: dict[str, str | None],
    *,
    expected: dict[str, Any],
    why: str,
    gate: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Apply alias moves atomically under the lock after checking every expectation."""
    st, uc = store_of(root), _uc(use_case)
    for alias in moves:
        if alias not in ALIASES:
            raise RegistryError(f"unknown alias {alias!r}; aliases are {ALIASES}")
    with st.lock(f"{uc}/.lock") as lease:
        known, gone = versions(root, use_case), retired(root, use_case)
        for alias, version in moves.items():
            if version is not None and version not in known:
                raise RegistryError(f"{use_case}/{version} is not a registered version")
            if version is not None and version in gone and alias != "previous":
                raise RegistryError(f"{use_case}/{version} is retired")
        aliases = read_aliases(root, use_case)  # re-read under the lock: the compare of CAS
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
        lease.check()
        _write_json(st, f"{uc}/aliases.json", aliases)
        for alias, version in moves.items():
            if old.get(alias) != version:
                _audit(st, uc, "alias", alias=alias, old=old.get(alias), new=version, why=why)
        if gate is not None:
            _audit(st, uc, "gate", why=why, **gate)
    return aliases


def _remove_stale_temps(st: LocalStore | FsspecStore, uc: str) -> None:
    """Leftovers of killed writers (only called under the lock, so none is in use): temp dirs,
    and version folders without their marker (an object store copies file by file)."""
    for name in st.listdir(uc):
        temp = name.startswith(".v") and "-" in name
        unmarked = VERSION_RE.match(name) and not st.exists(f"{uc}/{name}/{COMPLETE}")
        if (temp or unmarked) and st.isdir(f"{uc}/{name}"):
            st.remove_tree(f"{uc}/{name}")


def _audit(st: LocalStore | FsspecStore, uc: str, event: str, **fields: Any) -> None:
    """Append one entry; callers hold the use case's lock (object stores rewrite the file)."""
    entry = {"at": _now(), "by": who(), "event": event, **fields}
    st.append_line(f"{uc}/audit.jsonl", json.dumps(entry, ensure_ascii=False, default=str))


AUDIT_TIME = "%Y-%m-%dT%H:%M:%SZ"  # UTC, whole seconds


def _now() -> str:
    return time.strftime(AUDIT_TIME, time.gmtime())
