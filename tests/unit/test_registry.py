"""Local registry: immutable versions, idempotent registration, CAS aliases, audit log."""

from __future__ import annotations

import json
import threading

import pytest

from feinschliff.artifacts import AdapterRef, mark_complete
from feinschliff.registry import (
    AliasConflict,
    RegistryError,
    list_registry,
    manifest,
    production_adapter,
    promote,
    read_aliases,
    register_adapter,
    set_alias,
    versions,
)


def make_adapter(tmp_path, name: str, payload: bytes) -> AdapterRef:
    out = tmp_path / name
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 16, "peft_type": "LORA"}))
    (out / "adapter" / "adapter_model.safetensors").write_bytes(payload)
    return AdapterRef(path=str(out), sha256=mark_complete(out))


def test_register_copies_and_is_idempotent(tmp_path):
    root = tmp_path / "reg"
    a = make_adapter(tmp_path, "a", b"one")
    v1 = register_adapter(root, "support", a, {"train": {"method": "sft"}})
    assert v1 == "v0001"
    assert (root / "support" / v1 / "adapter" / "adapter_model.safetensors").read_bytes() == b"one"
    assert register_adapter(root, "support", a, {}) == v1  # same content: no new version
    b = make_adapter(tmp_path, "b", b"two")
    assert register_adapter(root, "support", b, {}) == "v0002"
    assert versions(root, "support") == ["v0001", "v0002"]
    assert manifest(root, "support", v1)["train"]["method"] == "sft"
    assert [r["version"] for r in list_registry(root)] == ["v0001", "v0002"]


def test_incomplete_version_is_invisible(tmp_path):
    root = tmp_path / "reg"
    register_adapter(root, "support", make_adapter(tmp_path, "a", b"x"), {})
    (root / "support" / "v0002" / "adapter").mkdir(parents=True)  # a crashed writer's leftovers
    assert versions(root, "support") == ["v0001"]
    with pytest.raises(RegistryError):
        set_alias(root, "support", "production", "v0002")
    assert register_adapter(root, "support", make_adapter(tmp_path, "b", b"y"), {}) == "v0003"


def test_not_an_adapter_and_bad_names_are_refused(tmp_path):
    root = tmp_path / "reg"
    out = tmp_path / "empty"
    (out / "adapter").mkdir(parents=True)
    with pytest.raises(RegistryError, match="not a PEFT adapter"):
        register_adapter(root, "support", AdapterRef(path=str(out), sha256="0"), {})
    a = make_adapter(tmp_path, "a", b"x")
    for bad in ("../escape", "Upper", "", "a/b"):
        with pytest.raises(RegistryError):
            register_adapter(root, bad, a, {})
    assert not (tmp_path / "escape").exists()


def test_promote_moves_previous_and_audits(tmp_path):
    root = tmp_path / "reg"
    v1 = register_adapter(root, "s", make_adapter(tmp_path, "a", b"1"), {})
    v2 = register_adapter(root, "s", make_adapter(tmp_path, "b", b"2"), {})
    promote(root, "s", v1, why="first")
    assert production_adapter(root, "s").path.endswith(v1)
    promote(root, "s", v2, why="better", decision={"promote": True})
    assert read_aliases(root, "s") == {"production": v2, "previous": v1}
    audit = [json.loads(line) for line in (root / "s" / "audit.jsonl").read_text().splitlines()]
    moves = [(e["alias"], e["old"], e["new"]) for e in audit if e["event"] == "alias"]
    assert moves == [("production", None, v1), ("production", v1, v2), ("previous", None, v1)]
    assert audit[-1]["event"] == "gate" and audit[-1]["decision"] == {"promote": True}


def test_stale_compare_and_swap_is_rejected(tmp_path):
    root = tmp_path / "reg"
    v1 = register_adapter(root, "s", make_adapter(tmp_path, "a", b"1"), {})
    v2 = register_adapter(root, "s", make_adapter(tmp_path, "b", b"2"), {})
    set_alias(root, "s", "production", v1, expected=None)
    with pytest.raises(AliasConflict):
        set_alias(root, "s", "production", v2, expected=None)
    assert read_aliases(root, "s")["production"] == v1


def test_concurrent_promotions_exactly_one_wins(tmp_path):
    root = tmp_path / "reg"
    vs = [
        register_adapter(root, "s", make_adapter(tmp_path, f"a{i}", bytes([i])), {})
        for i in range(8)
    ]
    wins, conflicts = [], []
    barrier = threading.Barrier(len(vs))

    def attempt(v):
        barrier.wait()
        try:
            set_alias(root, "s", "production", v, expected=None)
            wins.append(v)
        except AliasConflict:
            conflicts.append(v)

    threads = [threading.Thread(target=attempt, args=(v,)) for v in vs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(conflicts) == len(vs) - 1
    assert read_aliases(root, "s")["production"] == wins[0]
