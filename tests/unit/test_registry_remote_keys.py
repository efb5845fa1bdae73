"""A remote registry's keys are named by whoever can write the bucket: a key with `..`
segments was written outside the local registry cache when a version was materialised (before
its hash was checked), i.e. anywhere the runner can write (`~/.ssh`, `~/.bashrc`). It is now
refused before anything is written. (fsspec's in-memory store stands in for S3, whose keys are
opaque strings just the same.)"""

from __future__ import annotations

import json
import uuid

import fsspec
import pytest

from feinschliff import registry_read
from feinschliff.registry_store import FsspecStore, RegistryError


def test_a_key_leading_outside_the_version_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    st = FsspecStore(f"memory://reg-{uuid.uuid4().hex[:8]}")
    rel, sha = "uc/v0001", "a" * 64
    st.write_bytes(f"{rel}/manifest.json", json.dumps({"adapter_sha256": sha}).encode())
    st.write_bytes(f"{rel}/.complete", json.dumps({"sha256": sha}).encode())
    st.write_bytes(f"{rel}/adapter/adapter_config.json", b"{}")
    evil = f"{st.path}/{rel}/../../../../escaped.txt"
    st.fs.store[evil] = fsspec.implementations.memory.MemoryFile(st.fs, evil, b"owned")
    assert "../../../../escaped.txt" in st.files(rel)

    with pytest.raises(RegistryError, match="refusing the key '../../../../escaped.txt'"):
        registry_read.local_version(st, "uc", "v0001")
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not list((tmp_path / "home").rglob("adapter_config.json"))  # refused before writing
