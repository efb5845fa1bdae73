"""Reading the adapter registry: names, versions, aliases, manifests, audit log, local copies.

Nothing here writes to the registry (a remote version is only materialised into the local
cache). Writers are in :mod:`feinschliff.registry_write`; callers import both through
:mod:`feinschliff.registry`, whose docstring describes the layout.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from feinschliff.artifacts import COMPLETE, AdapterRef, completed_hash
from feinschliff.models import feinschliff_home
from feinschliff.registry_store import (
    InvalidName,
    RegistryError,
    Root,
    materialise,
    store_of,
)

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
    """Whether the registry holds the use case: a version, aliases or retired versions (an
    audit log alone, a rejected flow run's record, is nothing to serve: reconcile and gc ask
    this to catch a wrong registry). Checked before taking a lock, which would create the
    folder of a mistyped root."""
    st, uc = store_of(root), _uc(use_case)
    if not st.exists(uc):
        return False
    return any(st.exists(f"{uc}/{name}") for name in ("aliases.json", "retired.json")) or bool(
        versions(root, use_case)
    )


def version_dir(root: Root, use_case: str, version: str) -> Path | str:
    rel = _vrel(use_case, version)
    return root / rel if isinstance(root, Path) else f"{root.url}/{rel}"


def _read_json(root: Root, rel: str) -> Any:
    data = store_of(root).read_bytes(rel)
    return None if data is None else json.loads(data)


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


def marker_sha256(root: Root, use_case: str, version: str) -> str | None:
    """The version folder's hash from its completion marker: what ``version_adapter`` gives as
    the AdapterRef's sha256 (evaluate records it as the production it compared with)."""
    try:
        marker = _read_json(root, f"{_vrel(use_case, version)}/{COMPLETE}")
    except ValueError:
        return None
    sha = marker.get("sha256") if isinstance(marker, dict) else None
    return sha if isinstance(sha, str) else None


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


def registered_as(root: Root, use_case: str, adapter_sha: str) -> str | None:
    """The version whose adapter has content hash ``adapter_sha`` (as ``register_adapter``
    finds it), or None."""
    for v in versions(root, use_case):
        if manifest(root, use_case, v).get("adapter_sha256") == adapter_sha:
            return v
    return None


def moved_off_by_hand(root: Root, use_case: str, version: str) -> dict[str, Any] | None:
    """The audit entry of the last move of production away from ``version`` that no gate
    decision made (a rollback, or another version promoted by hand), unless production has
    been ``version`` again since: a human's decision that no scheduled run may undo. None
    when there is none. A promotion by the gate logs a ``gate`` entry right after its move."""
    left: dict[str, Any] | None = None
    for entry in audit_log(root, use_case):
        if entry.get("alias") != "production":
            continue
        if entry.get("event") == "alias" and entry.get("new") == version:
            left = None  # promoted again (by hand or by the gate): that decision stands
        elif entry.get("event") == "alias" and entry.get("old") == version:
            left = entry
        elif (
            entry.get("event") == "gate"
            and left is not None
            and entry.get("decision")
            and (entry.get("old"), entry.get("new")) == (version, left.get("new"))
        ):
            left = None  # the gate moved it: no human decision
    return left


def audit_log(root: Root, use_case: str) -> list[dict[str, Any]]:
    data = store_of(root).read_bytes(f"{_uc(use_case)}/audit.jsonl")
    if data is None:
        return []
    entries = []
    for n, line in enumerate(data.decode("utf-8", errors="replace").split("\n"), start=1):
        try:
            entry = json.loads(line) if line else None
        except ValueError:  # torn by a kill mid-append: skipped, not fatal for the registry
            entry = "unreadable (torn write?)"
        if isinstance(entry, dict):
            entries.append(entry)
        elif line:  # every reader expects objects (a hand edit left `[]`: skipped, said)
            log.warning(
                "%s audit.jsonl line %d is %s: skipped",
                use_case,
                n,
                entry if isinstance(entry, str) else "no JSON object",
            )
    return entries


def production_adapter(root: Root, use_case: str) -> AdapterRef | None:
    """The production version as a local AdapterRef (materialised for remote roots)."""
    version = read_aliases(root, use_case).get("production")
    return None if version is None else version_adapter(root, use_case, version)


def version_adapter(root: Root, use_case: str, version: str) -> AdapterRef:
    """A registered version as a local AdapterRef (materialised for remote roots)."""
    vdir = local_version(root, use_case, version)
    return AdapterRef(path=str(vdir), sha256=json.loads((vdir / COMPLETE).read_text())["sha256"])


def use_cases(root: Root) -> list[str]:
    """The use cases the registry holds (folders with a valid name), sorted."""
    st = store_of(root)
    return sorted(n for n in st.listdir("") if NAME_RE.match(n) and st.isdir(n))


def list_registry(root: Root, only: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per version, by use case; ``only``: just these use cases (in that order),
    each of which the caller knows the registry has."""
    rows: list[dict[str, Any]] = []
    for name in use_cases(root) if only is None else list(dict.fromkeys(only)):
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
                    # a manifest of older (or damaged) writers may lack any of these: a dash
                    "created_at": str(m.get("created_at") or "-"),
                    "method": _field(m, "train", "method"),
                    "gate": _field(m, "gate", "promote"),
                    "adapter_sha256": str(m.get("adapter_sha256") or "-")[:12],
                }
            )
    return rows


def _field(m: dict[str, Any], section: str, key: str) -> Any:
    part = m.get(section)
    return part.get(key) if isinstance(part, dict) else None
