"""Local registry writes are durable before they become visible.

A power cut cannot be simulated, so these tests record the order of ``os.fsync`` and renames
and check it: every file of a version (marker last) and its folders reach the disk before the
rename that publishes the version, the folder holding it after; alias/retired JSON files are
fsynced before their rename and their folder after it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from feinschliff.artifacts import COMPLETE
from feinschliff.registry import promote, register_adapter, retire
from tests.unit.adapter_factory import make_base, make_train_output, target_for


@pytest.fixture()
def events(monkeypatch):
    """Every fsync (as the path of its fd) and rename/replace, in order."""
    seen: list[tuple[str, ...]] = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd):
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst, *a, **kw):
        seen.append(("rename", os.fspath(src), os.fspath(dst)))
        real_rename(src, dst, *a, **kw)

    def replace(src, dst, *a, **kw):
        seen.append(("rename", os.fspath(src), os.fspath(dst)))
        real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    return seen


@pytest.fixture()
def register(tmp_path):
    base = make_base(tmp_path / "base")
    root = (tmp_path / "reg").resolve()

    def register(seed: float) -> str:
        ref = make_train_output(tmp_path / f"out-{seed}", str(base), seed=seed)
        return register_adapter(root, "s", ref, {}, target=target_for(base))

    register.root = root
    return register


def _index(events, event) -> int:
    assert event in events, f"{event} not in {events}"
    return events.index(event)


def test_a_version_is_on_disk_before_the_rename_that_publishes_it(register, events):
    version = register(1.0)
    uc = register.root / "s"
    final = uc / version
    [publish] = [e for e in events if e[0] == "rename" and e[2] == str(final)]
    at = events.index(publish)
    tmp = Path(publish[1])
    files = sorted(p.relative_to(final) for p in final.rglob("*") if p.is_file())
    assert Path("adapter/adapter_model.safetensors") in files and Path(COMPLETE) in files
    synced = {e[1]: i for i, e in enumerate(events) if e[0] == "fsync"}
    for rel in files:  # weights, config, manifest and marker: all fsynced before the rename
        assert synced.get(str(tmp / rel), at) < at, f"{rel} not fsynced before publishing"
    marker = synced[str(tmp / COMPLETE)]
    assert all(synced[str(tmp / rel)] < marker for rel in files if rel != Path(COMPLETE))
    for folder in (tmp / "adapter", tmp):  # their names in their folders, too
        assert synced.get(str(folder), at) < at, f"{folder} not fsynced before publishing"
    assert _index(events[at:], ("fsync", str(uc))) >= 0  # the rename itself, after it


def test_alias_and_retired_files_are_fsynced_with_their_folder(register, events):
    v1, v2 = register(1.0), register(2.0)
    uc = register.root / "s"
    events.clear()
    promote(register.root, "s", v1, why="first")
    retire(register.root, "s", v2, why="bad")
    for name in ("aliases.json", "retired.json"):
        path = uc / name
        moved = _index(events, ("rename", f"{path}.tmp", str(path)))
        assert _index(events, ("fsync", f"{path}.tmp")) < moved
        assert _index(events[moved:], ("fsync", str(uc))) >= 0, f"{name}: folder not fsynced"


def test_a_new_audit_log_is_fsynced_with_its_folder(register, events):
    register(1.0)
    uc = register.root / "s"
    created = _index(events, ("fsync", str(uc / "audit.jsonl")))
    assert _index(events[created:], ("fsync", str(uc))) >= 0
