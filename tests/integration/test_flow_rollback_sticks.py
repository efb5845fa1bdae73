"""An operator's rollback stands: the next scheduled run without new feedback trains (from the
cache) the very adapter production was rolled back from. It must not evaluate and promote it
again, nor fail every day trying to promote a version the operator then retired.

The real flow, caching, ledger, gate and registry with fake slow stages (the ``fake`` fixture
of test_flow_resume.py, which says what it replaces and where the real stages are covered)."""

from __future__ import annotations

from pathlib import Path

import pytest

from feinschliff.registry import audit_log, promote, read_aliases, retire, rollback, versions
from tests.integration import test_flow_resume as resume
from tests.integration.test_flow_resume import DEMO, PASSING, USE_CASE
from tests.integration.test_flow_unchanged import _gate_artifact

fake = resume.fake  # the fake-stage fixture, registered under its name in this module too

pytestmark = pytest.mark.integration


def _run(tmp_path: Path, **kw):
    from flows.retrain import retrain

    return retrain(recipe_path=DEMO, overrides=PASSING, workdir=str(tmp_path / "w"), **kw)


def _v2_rolled_back(fake, home, tmp_path) -> Path:
    """v0001, then v0002 from new feedback, then an operator's rollback to v0001."""
    assert _run(tmp_path)["version"] == "v0001"
    fake.feedback = "feedback-2"
    assert _run(tmp_path)["version"] == "v0002"
    root = home / "registry"
    rollback(root, USE_CASE, why="operator: v0002 misbehaves")
    assert read_aliases(root, USE_CASE)["production"] == "v0001"
    return root


def test_a_rollback_is_not_undone_by_the_next_run_without_new_feedback(
    fake, home, tmp_path, caplog
):
    """The rerun trained v0002's adapter again (cached), evaluated it against v0001, promoted it
    over the rollback and announced "promoted v0002"."""
    root = _v2_rolled_back(fake, home, tmp_path)
    moves = len(audit_log(root, USE_CASE))
    caplog.clear()

    state = _run(tmp_path, return_state=True)

    result = state.result()
    assert result["promoted"] is False and result["unchanged"] is True
    assert result["held"] == "v0002" and result["version"] == "v0002"
    assert result["decision"] is None and result["report"] is None
    assert read_aliases(root, USE_CASE)["production"] == "v0001"  # the rollback stands
    assert len(audit_log(root, USE_CASE)) == moves  # nothing registered, moved or gated
    assert fake.events() == [("promoted", "v0001"), ("promoted", "v0002")]  # no notice
    assert (
        "decision: HELD: the adapter is v0002, which production was rolled back from (to v0001"
        in (result["summary"])
    )
    assert (
        "operator: v0002 misbehaves); promote it by hand (feinschliff registry promote)"
        in (result["summary"])
    )
    assert result["summary"] in caplog.text and "PROMOTED" not in caplog.text
    gate = _gate_artifact(state.state_details.flow_run_id)
    assert gate.startswith("## Gate: **HELD**: the adapter is `v0002`")


def test_new_feedback_after_a_rollback_trains_and_promotes_again(fake, home, tmp_path):
    """The hold is for the rolled-back adapter only: new feedback gives a new one."""
    root = _v2_rolled_back(fake, home, tmp_path)
    assert _run(tmp_path)["held"] == "v0002"
    fake.feedback = "feedback-3"

    result = _run(tmp_path)

    assert result["promoted"] is True and result["version"] == "v0003"
    assert read_aliases(root, USE_CASE)["production"] == "v0003"


def test_a_held_version_promoted_by_hand_is_production_again(fake, home, tmp_path):
    """The operator's way out: `feinschliff registry promote` makes it production, and the
    next run finds it unchanged (not held)."""
    root = _v2_rolled_back(fake, home, tmp_path)
    promote(root, USE_CASE, "v0002", why="promoted via CLI")

    result = _run(tmp_path)

    assert result["unchanged"] is True and result["held"] is None
    assert result["version"] == "v0002"


def test_a_retired_version_is_held_not_a_failed_promotion(fake, home, tmp_path):
    """Rolled back, then retired: the rerun evaluated it, passed the gate, got v0002 back from
    register (same content) and failed promoting it ("v0002 is retired"), notifying a failure
    on every scheduled run."""
    root = _v2_rolled_back(fake, home, tmp_path)
    retire(root, USE_CASE, "v0002", why="leaks customer names")

    result = _run(tmp_path)

    assert result["held"] == "v0002" and result["unchanged"] is True
    assert "which was retired (by " in result["summary"]
    assert "leaks customer names" in result["summary"]
    assert read_aliases(root, USE_CASE)["production"] == "v0001"
    assert versions(root, USE_CASE) == ["v0001", "v0002"]
    assert fake.events() == [("promoted", "v0001"), ("promoted", "v0002")]
