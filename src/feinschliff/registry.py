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

This module is the registry's one import path: readers live in
:mod:`feinschliff.registry_read`, writers in :mod:`feinschliff.registry_write`, the stores in
:mod:`feinschliff.registry_store`. Patch a function where it is defined (a test that patches
``registry.read_aliases`` changes what callers of ``registry.read_aliases`` see, not the
registry's own calls).
"""

from feinschliff.registry_read import (
    ALIASES,
    NAME_RE,
    SHA256_RE,
    UNSET,
    VERSION_RE,
    adapter_path,
    adapter_sha256,
    audit_log,
    checked_sha256,
    has_use_case,
    list_registry,
    local_version,
    manifest,
    production_adapter,
    production_history,
    read_aliases,
    retired,
    use_case_dir,
    version_adapter,
    version_dir,
    version_hash,
    versions,
)
from feinschliff.registry_store import (
    AliasConflict,
    InvalidName,
    LockLost,
    LockTimeout,
    RegistryError,
    Root,
    default_root,
    location,
    open_root,
    store_of,
)
from feinschliff.registry_write import (
    AUDIT_TIME,
    lock,
    promote,
    record_event,
    register_adapter,
    retire,
    rollback,
    set_alias,
)

__all__ = [
    "ALIASES",
    "AUDIT_TIME",
    "NAME_RE",
    "SHA256_RE",
    "UNSET",
    "VERSION_RE",
    "AliasConflict",
    "InvalidName",
    "LockLost",
    "LockTimeout",
    "RegistryError",
    "Root",
    "adapter_path",
    "adapter_sha256",
    "audit_log",
    "checked_sha256",
    "default_root",
    "has_use_case",
    "list_registry",
    "local_version",
    "location",
    "lock",
    "manifest",
    "open_root",
    "production_adapter",
    "production_history",
    "promote",
    "read_aliases",
    "record_event",
    "register_adapter",
    "retire",
    "retired",
    "rollback",
    "set_alias",
    "store_of",
    "use_case_dir",
    "version_adapter",
    "version_dir",
    "version_hash",
    "versions",
]
