"""Which audit-log moves hold a version back from automatic promotion (``moved_off_by_hand``):
a rollback or a promotion by hand away from it, not a promotion through the gate, and not
once it has been production again."""

from __future__ import annotations

import json
from pathlib import Path

from feinschliff.registry_read import moved_off_by_hand

USE_CASE = "support-de-demo"


def _log(tmp_path: Path, *entries: dict) -> Path:
    root = tmp_path / "registry"
    (root / USE_CASE).mkdir(parents=True)
    lines = [json.dumps({"at": "2026-11-27T10:00:00Z", "by": "ops", **e}) for e in entries]
    (root / USE_CASE / "audit.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _alias(old, new, why="x") -> dict:
    return {"event": "alias", "alias": "production", "old": old, "new": new, "why": why}


def _gate(old, new) -> dict:
    decision = {"promote": True}
    return {"event": "gate", "alias": "production", "old": old, "new": new, "decision": decision}


def test_only_a_move_by_hand_away_from_a_version_holds_it(tmp_path):
    """A rollback (or a promotion by hand) holds the version it replaced; a promotion through
    the gate does not, and nor does one promoted again since."""
    rolled = _log(
        tmp_path / "a",
        _alias(None, "v0001"),
        _alias("v0001", "v0002"),
        _gate("v0001", "v0002"),
        _alias("v0002", "v0001", "bad"),
    )
    assert moved_off_by_hand(rolled, USE_CASE, "v0002")["why"] == "bad"
    assert moved_off_by_hand(rolled, USE_CASE, "v0001") is None  # replaced through the gate
    again = _log(
        tmp_path / "b", _alias("v0001", "v0002"), _alias("v0002", "v0001"), _alias("v0001", "v0002")
    )
    assert moved_off_by_hand(again, USE_CASE, "v0002") is None
