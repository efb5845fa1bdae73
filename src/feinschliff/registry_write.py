"""Writing the adapter registry: register a version, move aliases (promote, rollback, retire),
record events in the audit log.

Every change happens under the use case's lock, re-reads what it depends on under it, and
checks the lock's lease just before it writes; the audit entry is appended under the same lock.
Readers are in :mod:`feinschliff.registry_read`; callers import both through
:mod:`feinschliff.registry`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from feinschliff.artifacts import COMPLETE, AdapterRef, hash_tree, mark_complete, write_json
from feinschliff.registry_read import (
    ALIASES,
    UNSET,
    VERSION_RE,
    _uc,
    audit_log,
    manifest,
    read_aliases,
    retired,
    versions,
)
from feinschliff.registry_store import (
    AliasConflict,
    FsspecStore,
    Lease,
    LocalStore,
    RegistryError,
    Root,
    store_of,
    who,
)
from feinschliff.serving.preflight import BaseTarget, preflight

log = logging.getLogger(__name__)
RECOVERED = "recovered: found {} without its audit entry (its writer was killed before it)"


@contextmanager
def lock(root: Root, use_case: str, name: str = ".lock") -> Iterator[Lease]:
    """The use case's exclusive lock ``name`` on whatever store holds the registry."""
    with store_of(root).lock(f"{_uc(use_case)}/{name}") as lease:
        yield lease


def _write_json(root: Root, rel: str, data: Any) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    store_of(root).write_bytes(rel, text.encode("utf-8"))


def register_adapter(
    root: Root,
    use_case: str,
    adapter: AdapterRef,
    lineage: dict[str, Any],
    *,
    target: BaseTarget,
    adapter_sha256: str | None = None,
) -> str:
    """Preflight an adapter, then copy it into a new immutable version.

    Idempotent for the same adapter content (returns the existing version). Raises
    :class:`~feinschliff.serving.preflight.PreflightError` before writing anything.
    ``adapter_sha256``: ``hash_tree(adapter.dir / "adapter")`` when the caller has just
    computed it (the content key of the version; not hashed again then).
    """
    uc = _uc(use_case)
    st = store_of(root)
    src = adapter.dir / "adapter"
    report = preflight(src, target)
    adapter_sha = hash_tree(src) if adapter_sha256 is None else adapter_sha256
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
    decision: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Move one alias (compare-and-swap on ``expected`` when given). Returns the new aliases.
    ``decision``: a gate decision to record in the audit log with it."""
    gate = None if decision is None else {"alias": alias, "new": version, "decision": decision}
    return _move(root, use_case, {alias: version}, expected={alias: expected}, why=why, gate=gate)


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
            _audit_unaudited(root, use_case, lease)
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
    """Mark a version as never to be served again; drops candidate/previous aliases on it.
    A version retired before keeps its first record (when, by whom, why): nothing changes."""
    st, uc = store_of(root), _uc(use_case)
    manifest(root, use_case, version)
    with st.lock(f"{uc}/.lock") as lease:
        _audit_unaudited(root, use_case, lease)
        aliases = read_aliases(root, use_case)
        if aliases.get("production") == version:
            raise RegistryError(f"{use_case}/{version} is production; promote or roll back first")
        gone = retired(root, use_case)
        if version in gone:  # a second retire overwrote the reason the first one gave
            return aliases
        gone[version] = {"at": _now(), "by": who(), "why": why}
        dropped = [a for a, v in aliases.items() if v == version]
        for alias in dropped:
            aliases.pop(alias)
        lease.check()
        # state first, audit after (as _move): a kill in between leaves a change the log lacks,
        # which the next write appends (_audit_unaudited), never an entry for a change not made
        _write_json(st, f"{uc}/retired.json", gone)
        _write_json(st, f"{uc}/aliases.json", aliases)
        _audit(st, uc, "retire", alias=None, old=version, new=None, why=why)
        for alias in dropped:
            _audit(st, uc, "alias", alias=alias, old=version, new=None, why=f"{version} retired")
    return aliases


def record_event(root: Root, use_case: str, event: str, **fields: Any) -> None:
    """Append a non-alias event (e.g. a human approval decision) to the use case's audit log."""
    st, uc = store_of(root), _uc(use_case)
    with st.lock(f"{uc}/.lock") as lease:
        lease.check()
        _audit(st, uc, event, **fields)


def record_event_once(root: Root, use_case: str, event: str, key: str, **fields: Any) -> bool:
    """Append ``event`` with ``key`` unless the log already holds that event with that key
    (checked under the lock, so two attempts of one run record it once). False: already there."""
    st, uc = store_of(root), _uc(use_case)
    with st.lock(f"{uc}/.lock") as lease:
        if any(e.get("event") == event and e.get("key") == key for e in audit_log(root, use_case)):
            return False
        lease.check()
        _audit(st, uc, event, key=key, **fields)
    return True


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
        _audit_unaudited(root, use_case, lease)
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
        if gate is not None:  # the alias's value before, unless the caller knew it
            _audit(st, uc, "gate", why=why, **{"old": old.get(gate["alias"]), **gate})
    return aliases


def _audit_unaudited(root: Root, use_case: str, lease: Lease) -> None:
    """Under the lock, before a change: append what a killed writer changed (aliases.json or
    retired.json written, its audit lines not yet) so the log still holds every move. Moves
    are replayed from the log's alias entries and compared with aliases.json."""
    st, uc = store_of(root), _uc(use_case)
    logged: dict[str, Any] = {}
    logged_retired = set()
    for entry in audit_log(root, use_case):
        if entry.get("event") == "alias" and entry.get("alias"):
            logged[entry["alias"]] = entry.get("new")
        elif entry.get("event") == "retire":
            logged_retired.add(entry.get("old"))
    aliases, gone = read_aliases(root, use_case), retired(root, use_case)
    missing = [v for v in gone if v not in logged_retired]
    moved = [a for a in sorted({*logged, *aliases}) if logged.get(a) != aliases.get(a)]
    if not (missing or moved):
        return
    lease.check()
    for version in missing:
        was = gone[version]
        log.warning("%s: %s retired without an audit entry: recorded now", uc, version)
        why = RECOVERED.format(f"in retired.json ({was.get('why', '')})")
        # who retired it and when, as retired.json recorded them (not the next writer's)
        when = {k: was[k] for k in ("at", "by") if was.get(k)}
        _audit(st, uc, "retire", alias=None, old=version, new=None, why=why, recovered=True, **when)
    for alias in moved:
        old, new = logged.get(alias), aliases.get(alias)
        log.warning(
            "%s: %s moved %s -> %s without an audit entry: recorded now", uc, alias, old, new
        )
        why = RECOVERED.format("in aliases.json")
        _audit(st, uc, "alias", alias=alias, old=old, new=new, why=why, recovered=True)


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
