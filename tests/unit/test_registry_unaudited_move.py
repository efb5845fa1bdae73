"""Every alias move and retirement is in the audit log, even after a writer was killed between
writing ``aliases.json``/``retired.json`` and appending its audit lines.

The next writer, under the use case's lock and before its own change, replays the log's alias
entries, compares them with ``aliases.json`` (and the log's retirements with ``retired.json``)
and appends what is missing, marked ``recovered``. ``production_history`` (which pinned versions
reconcile keeps) reads the log, so a lost entry also lost a version from it. The kill is
simulated in-process (an exception nothing catches, at the audit append); on a local directory
and on ``memory://`` (the object-store path), via test_registry's fixtures.
"""

from __future__ import annotations

import logging
import uuid

import pytest

from feinschliff import registry_write
from feinschliff.registry import (
    audit_log,
    open_root,
    production_history,
    promote,
    read_aliases,
    register_adapter,
    retire,
    retired,
    set_alias,
    store_of,
)
from tests.unit.adapter_factory import make_base, make_train_output, target_for


@pytest.fixture(params=["local", "memory"])
def reg(request, tmp_path, monkeypatch):
    """register(seed) -> version of use case ``s``, in a fresh local or memory:// registry."""
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    base = make_base(tmp_path / "base")
    url = f"memory://reg-{uuid.uuid4().hex[:8]}/registry"
    root = tmp_path / "reg" if request.param == "local" else open_root(url)

    def register(seed: float) -> str:
        ref = make_train_output(tmp_path / f"out-{seed}", str(base), seed=seed)
        return register_adapter(root, "s", ref, {}, target=target_for(base))

    register.root = root
    yield register
    if request.param == "memory":
        store_of(url).remove_tree("")


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, nothing catches it."""


def _kill_at_audit(monkeypatch, event: str) -> None:
    real = registry_write._audit

    def audit(st, uc, ev, **fields):
        if ev == event:
            raise Killed
        return real(st, uc, ev, **fields)

    monkeypatch.setattr(registry_write, "_audit", audit)


def _replayed(root) -> dict[str, str]:
    """The aliases as the audit log tells them."""
    aliases = {e["alias"]: e["new"] for e in audit_log(root, "s") if e["event"] == "alias"}
    return {alias: version for alias, version in aliases.items() if version is not None}


def test_a_promotion_killed_before_its_audit_line_is_recorded_by_the_next_move(reg, monkeypatch):
    v1, v2, v3 = reg(1.0), reg(2.0), reg(3.0)
    promote(reg.root, "s", v1, why="first")
    with monkeypatch.context() as m:
        _kill_at_audit(m, "alias")
        with pytest.raises(Killed):
            promote(reg.root, "s", v2, why="second")
    assert read_aliases(reg.root, "s") == {"production": v2, "previous": v1}
    assert _replayed(reg.root) == {"production": v1}  # the log lost the move

    promote(reg.root, "s", v3, why="third")

    recovered = [e for e in audit_log(reg.root, "s") if e.get("recovered")]
    assert [(e["alias"], e["old"], e["new"]) for e in recovered] == [
        ("previous", None, v1),
        ("production", v1, v2),
    ]
    assert all(e["why"].startswith("recovered:") for e in recovered)
    assert (
        _replayed(reg.root)
        == read_aliases(reg.root, "s")
        == {
            "production": v3,
            "previous": v2,
        }
    )
    assert production_history(reg.root, "s") == [v3, v2, v1]


def test_a_retirement_killed_before_its_audit_lines_is_recorded_by_the_next_move(
    reg, monkeypatch, caplog
):
    v1, v2, v3 = reg(1.0), reg(2.0), reg(3.0)
    promote(reg.root, "s", v1, why="first")
    set_alias(reg.root, "s", "candidate", v2, why="next")
    with monkeypatch.context() as m:
        _kill_at_audit(m, "retire")
        with pytest.raises(Killed):
            retire(reg.root, "s", v2, why="bad answers")
    assert v2 in retired(reg.root, "s")

    monkeypatch.setenv("FEINSCHLIFF_USER", "the-next-writer")
    with caplog.at_level(logging.WARNING):
        set_alias(reg.root, "s", "candidate", v3, why="next")

    entries = audit_log(reg.root, "s")
    assert [e["old"] for e in entries if e["event"] == "retire"] == [v2]
    entry = next(e for e in entries if e["event"] == "retire")
    assert "bad answers" in entry["why"] and entry["recovered"] is True
    # who retired it and when (retired.json), not whoever happened to write next
    assert (entry["by"], entry["at"]) == (
        retired(reg.root, "s")[v2]["by"],
        retired(reg.root, "s")[v2]["at"],
    )
    assert entry["by"] != "the-next-writer"
    assert any(f"{v2} retired without an audit entry" in r.getMessage() for r in caplog.records)
    assert (
        _replayed(reg.root)
        == read_aliases(reg.root, "s")
        == {
            "production": v1,
            "candidate": v3,
        }
    )


def test_nothing_is_recovered_when_the_log_is_complete(reg):
    v1, v2 = reg(1.0), reg(2.0)
    promote(reg.root, "s", v1, why="first")
    promote(reg.root, "s", v2, why="second")
    retire(reg.root, "s", v1, why="old")
    set_alias(reg.root, "s", "candidate", v2, why="again")
    assert not any(e.get("recovered") for e in audit_log(reg.root, "s"))
