"""A scheduled run that changes nothing: no new feedback, the training comes from the cache and
its adapter is already production. It must neither evaluate again, ask a reviewer, nor
announce a "promotion"; and an operator sees in Prefect what each live pull fetched.

The real flow, caching, ledger, gate and registry with fake slow stages (the ``fake`` fixture
of test_flow_resume.py, which says what it replaces and where the real stages are covered)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feinschliff.registry import audit_log, read_aliases, versions
from flows import artifacts
from tests.integration import test_flow_resume as resume
from tests.integration.test_flow_resume import DEMO, PASSING, USE_CASE

fake = resume.fake  # the fake-stage fixture, registered under its name in this module too

pytestmark = pytest.mark.integration

REAL_PUBLISH_INGEST = artifacts.publish_ingest  # the fixture turns artifacts off
REAL_PUBLISH_DECISION = artifacts.publish_decision
APPROVAL = [
    'gate.rules=[{"rule": "min_samples", "metric": "de_wissen_mc/acc", "threshold": 10},'
    ' {"rule": "require_approval", "timeout_s": 60}]'
]


@pytest.fixture()
def evaluations(fake, monkeypatch) -> list[str]:
    """The production each real (not cached) evaluation compared with."""
    from flows import tasks

    seen: list[str] = []

    def evaluate(recipe, adapter, out, *, production=None, data=None):
        seen.append(production.path if production else None)
        return fake.evaluate(recipe, adapter, out, production=production, data=data)

    monkeypatch.setattr(tasks, "run_evaluate", evaluate)
    return seen


def _run(tmp_path: Path, overrides: list[str] = PASSING, **kw) -> dict:
    from flows.retrain import retrain

    return retrain(recipe_path=DEMO, overrides=overrides, workdir=str(tmp_path / "w"), **kw)


def _gate_artifact(flow_run_id, what: str = "gate") -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    (gate,) = [a.data for a in found if a.key == f"{USE_CASE}-{what}"]
    return gate


def test_a_run_shows_the_use_cases_history_in_the_ui(fake, home, tmp_path, monkeypatch):
    """Whoever triggers (or approves) a run sees the trend of the gate metrics across the
    versions in the Prefect UI, as `registry history --plot` draws it."""
    monkeypatch.setattr(artifacts, "publish_decision", REAL_PUBLISH_DECISION)
    state = _run(tmp_path, return_state=True)
    assert state.result()["version"] == "v0001"
    history = _gate_artifact(state.state_details.flow_run_id, "history")
    assert history.startswith(f"## {USE_CASE}: versions over time")
    assert "data:image/png;base64," in history and "v0001" in history and "production" in history


def test_a_rerun_without_new_feedback_reports_unchanged_and_stays_quiet(
    fake, home, tmp_path, caplog
):
    """It printed `decision: PROMOTED registry version: v0001`, returned promoted: true and
    notified "promoted" on every scheduled run (each opens a new ledger run)."""
    from flows.retrain import retrain

    first = _run(tmp_path)
    assert first["promoted"] is True and first["version"] == "v0001"
    caplog.clear()

    state = retrain(
        recipe_path=DEMO, overrides=PASSING, workdir=str(tmp_path / "w"), return_state=True
    )

    again = state.result()
    assert again["promoted"] is False and again["unchanged"] is True
    assert again["version"] == "v0001" and again["decision"] is None
    assert fake.events() == [("promoted", "v0001")]  # nothing announced the second time
    assert "decision: UNCHANGED: the adapter is already production v0001" in caplog.text
    assert "PROMOTED" not in caplog.text
    gate = _gate_artifact(state.state_details.flow_run_id)
    assert gate.startswith("## Gate: **UNCHANGED**: the adapter is already production `v0001`")
    root = home / "registry"
    assert versions(root, USE_CASE) == ["v0001"]
    assert [e["event"] for e in audit_log(root, USE_CASE)] == ["register", "alias", "gate"]


def test_the_first_run_after_a_promotion_does_not_evaluate_again(fake, evaluations, home, tmp_path):
    """New feedback promotes v0002 (evaluated against v0001). The next run without new
    feedback trained nothing but evaluated again: evaluate's key names the production it
    compares with, now the candidate itself (an 8B model's full lm-eval after every
    promotion)."""
    assert _run(tmp_path)["version"] == "v0001"
    fake.feedback = "feedback-2"
    assert _run(tmp_path)["version"] == "v0002"
    assert len(evaluations) == 2

    again = _run(tmp_path)

    assert len(evaluations) == 2  # nothing evaluated
    assert again["unchanged"] is True and again["version"] == "v0002"
    assert read_aliases(home / "registry", USE_CASE)["production"] == "v0002"
    assert fake.events() == [("promoted", "v0001"), ("promoted", "v0002")]


def test_a_gate_or_evaluate_change_on_the_production_adapter_asks_nobody(
    fake, evaluations, home, tmp_path, monkeypatch
):
    """A recipe change that touches only evaluate and the gate (training cached: the same
    adapter) has nothing to decide: production is that very adapter. No evaluation, and a
    new require_approval rule does not page a reviewer to approve what is already live."""
    from flows import retrain as retrain_module

    assert _run(tmp_path)["version"] == "v0001"

    def ask(*a, **k):
        raise AssertionError("a reviewer was asked to approve the production adapter")

    monkeypatch.setattr(retrain_module, "ask_for_approval", ask)
    again = _run(tmp_path, APPROVAL + ["evaluate.limit=5"])

    assert again["unchanged"] is True and again["promoted"] is False
    assert len(evaluations) == 1
    assert fake.events() == [("promoted", "v0001")]


def test_a_rerun_after_a_crash_past_its_own_promotion_still_finishes_it(
    fake, home, tmp_path, monkeypatch
):
    """The resumed run compares with the production it recorded before its own promotion, so
    the adapter it promoted is no "unchanged" one: it finishes (one promotion notice)."""
    from flows import faults

    monkeypatch.setenv("FEINSCHLIFF_FAULT_AT", "before-notify:raise-once")
    with pytest.raises(faults.InjectedFault):
        _run(tmp_path)
    monkeypatch.delenv("FEINSCHLIFF_FAULT_AT")

    rerun = _run(tmp_path)

    assert rerun["promoted"] is True and rerun["version"] == "v0001"
    assert rerun["unchanged"] is False
    assert fake.events() == [("failed", None), ("promoted", "v0001")]


def test_an_evaluate_only_run_of_the_production_adapter_still_evaluates(fake, home, tmp_path):
    """register=false asks for an evaluation (the way to fresh numbers in Prefect): it is not
    cut short as unchanged."""
    assert _run(tmp_path)["version"] == "v0001"

    result = _run(tmp_path, register=False)

    assert result["unchanged"] is False and result["decision"]["promote"] is True
    assert fake.events() == [("promoted", "v0001"), ("passed", None)]


PULL = {
    "kind": "langfuse",
    "path": "mirror/0123",
    "pull": {
        "fetched": {"observations": 0, "scores": 3},
        "watermark_before": {"identity": "project:p", "scores": "2026-10-25T10:09:00Z"},
        "watermark_after": {"identity": "project:p", "scores": "2026-10-26T08:00:00Z"},
    },
}


def test_each_pull_is_logged_and_in_the_ingest_artifact(fake, home, tmp_path, monkeypatch, caplog):
    """Fetched counts and watermarks were only in manifest.json (the library logs them at
    INFO, which a deployed run does not show)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows import tasks
    from flows.retrain import retrain

    def ingest(spec, out, *, eval_tasks=()):
        ref = fake.ingest(spec, out, eval_tasks=eval_tasks)
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["sources"] = [
            {"kind": "jsonl", "path": "f.jsonl"},
            PULL,
        ]  # a file source pulls nothing
        (out / "manifest.json").write_text(json.dumps(manifest))
        return ref  # the marker does not cover manifest.json edits the flow only reads

    monkeypatch.setattr(tasks, "run_ingest", ingest)
    monkeypatch.setattr(artifacts, "publish_ingest", REAL_PUBLISH_INGEST)
    state = retrain(  # evaluate only: the registry's lineage reads more of the manifest
        recipe_path=DEMO,
        overrides=PASSING,
        workdir=str(tmp_path / "w"),
        register=False,
        return_state=True,
    )
    assert state.is_completed(), state.message

    line = (
        "pull 2 (langfuse): fetched observations 0, scores 3; watermark identity unchanged: "
        "project:p; scores 2026-10-25T10:09:00Z -> 2026-10-26T08:00:00Z"
    )
    assert line in caplog.text
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    (table,) = [a.data for a in found if a.key == f"{USE_CASE}-ingest"]
    rows = json.loads(table) if isinstance(table, str) else table
    assert {"output": "pull 2 (langfuse): fetched scores", "rows": 3} in rows
    assert {
        "output": "pull 2 (langfuse): watermark scores",
        "rows": "2026-10-25T10:09:00Z -> 2026-10-26T08:00:00Z",
    } in rows
