"""The retrain flow's reruns after a failure, under Prefect's test harness, with the slow
stages (ingest, train, evaluate) replaced by fakes: the flow, its caching, the ledger, the gate
and the registry are the real ones. Seconds per test instead of minutes."""

from __future__ import annotations

import json
import logging
import types
from pathlib import Path

import pytest

from feinschliff.registry import audit_log, read_aliases, rollback, versions

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")
USE_CASE = "support-de-demo"
PASSING = ['gate.rules=[{"rule": "min_samples", "metric": "de_wissen_mc/acc", "threshold": 10}]']

pytestmark = pytest.mark.integration


class FakeStages:
    """What the fakes saw and sent; ``feedback`` is what the next ingest reads (its rows and
    its cache key), so a test can make new feedback arrive."""

    def __init__(self) -> None:
        self.feedback = "feedback-1"
        self.sent: list[tuple[str, dict]] = []

    def ingest(self, spec, out, *, eval_tasks=()):
        from feinschliff.artifacts import DatasetRef, mark_complete

        out.mkdir(parents=True, exist_ok=True)
        (out / "sft.jsonl").write_text(json.dumps({"feedback": self.feedback}) + "\n")
        manifest = {"counts": {"sft.jsonl": 1}, "sources": [], "sha256": {}}
        (out / "manifest.json").write_text(json.dumps(manifest))
        return DatasetRef(path=str(out), sha256=mark_complete(out, stage="ingest"))

    def train(self, recipe, data, out, *, production=None):
        """An adapter whose content depends on the recipe and the rows: new feedback, new
        registry version."""
        from feinschliff.artifacts import AdapterRef, mark_complete, prepare_out, rows_sha256
        from feinschliff.train.stage import cache_key

        key = cache_key(recipe, data, production)
        prepare_out(out, key)
        (out / "adapter").mkdir()
        weights = [recipe.train.model_dump(mode="json"), rows_sha256(data)]
        (out / "adapter" / "w.bin").write_text(json.dumps(weights))
        (out / "metrics.json").write_text(json.dumps({"loss_curve": [{"step": 1, "loss": 1.0}]}))
        return AdapterRef(path=str(out), sha256=mark_complete(out, stage="train", key=key))

    def evaluate(self, recipe, adapter, out, *, production=None, data=None):
        from feinschliff.artifacts import ReportRef, mark_complete

        out.mkdir(parents=True, exist_ok=True)
        metrics = {
            "base": {"de_wissen_mc/acc": {"value": 0.5, "samples": 100}},
            "candidate": {"de_wissen_mc/acc": {"value": 0.9, "samples": 100}},
        }
        (out / "report.json").write_text(json.dumps({"metrics": metrics}))
        return ReportRef(path=str(out), sha256=mark_complete(out, stage="evaluate"))

    def send(self, event, use_case, details, urls=None):
        self.sent.append((event, details))
        return 1

    def events(self) -> list[tuple[str, str | None]]:
        return [(event, details.get("version")) for event, details in self.sent]


@pytest.fixture()
def fake(prefect_harness, home, monkeypatch):
    """The real flow with fake slow stages, artifacts off, any adapter accepted by preflight.

    What is replaced, and why (every test here runs the flow two or three times):
    - ingest, train, evaluate: the real stages take minutes per run on the demo model, and the
      tests need a chosen gate outcome and new feedback between runs (``ingest_fingerprint``
      follows ``feedback`` instead of the demo's source files). The real stages through the
      real flow, killed and rerun: tests/reliability/test_task_boundaries.py
      (test_kill_at_every_task_boundary_then_rerun_does_each_side_effect_once, and
      test_kill_at_vllm_boundaries_then_rerun_loads_each_adapter_once for the
      register:after-alias-before-vllm hook used below); failed runs and their reruns in
      tests/integration/test_flow_orchestration.py
      (test_a_rerun_after_its_own_promotion_decides_as_the_first_attempt_did,
      test_a_failed_run_whose_production_moved_meanwhile_is_not_resumed). An operator's
      rollback between the kill and the rerun is covered only here.
    - the Prefect artifacts: they read files only the real stages write (loss.png, the
      report), and no test here checks them; the real ones are read back from a real Prefect
      server in test_prefect_server.py::test_deployment_sync_trigger_and_complete.
    - notify.send: records the event and details the flow announces, which is what these tests
      check (a webhook receives only apprise's rendered title and message); the real send
      through apprise: tests/integration/test_notify.py, and once per run with the real flow
      in test_flow_orchestration.py::test_rejection_notifies_exactly_once.
    - preflight (at registration and promotion) and base_target: the fake adapters are no LoRA adapters of a base model, so
      the real preflight refuses them; it runs on real adapters in the real-stage flow tests
      above and in tests/integration/test_vllm_registry.py.
    """
    import feinschliff.notify
    import feinschliff.registry_write
    import feinschliff.serving.deploy
    import feinschliff.serving.publish
    from flows import artifacts, faults, tasks

    stages = FakeStages()
    monkeypatch.setattr(tasks, "run_ingest", stages.ingest)
    monkeypatch.setattr(tasks, "ingest_fingerprint", lambda recipe: stages.feedback)
    monkeypatch.setattr(tasks, "run_train", stages.train)
    monkeypatch.setattr(tasks, "run_evaluate", stages.evaluate)
    for name in ("recipe", "ingest", "training", "evaluation", "decision"):
        monkeypatch.setattr(artifacts, f"publish_{name}", lambda *a, **k: None)
    monkeypatch.setattr(feinschliff.notify, "send", stages.send)
    adapter = types.SimpleNamespace(rank=16, target_modules=["q_proj"], base_model="demo")
    monkeypatch.setattr(feinschliff.registry_write, "preflight", lambda src, target: adapter)
    # the promotion checks the version against the recipe's serving settings again
    monkeypatch.setattr(feinschliff.serving.deploy, "preflight_version", lambda *a: adapter)
    monkeypatch.setattr(feinschliff.serving.publish, "base_target", lambda recipe: None)
    monkeypatch.setattr(faults, "_raised", set())
    return stages


def _production_moves(root: Path) -> list[str]:
    events = audit_log(root, USE_CASE)
    return [e["new"] for e in events if e["event"] == "alias" and e["alias"] == "production"]


def test_new_feedback_after_a_run_broke_past_its_promotion_starts_a_new_run(
    fake, home, tmp_path, monkeypatch
):
    """A run promotes v0001 and fails before it notifies (the run is never closed). The next
    scheduled run brings new feedback: it must not resume the broken run (which compares and
    swaps against the production it recorded before its own promotion: AliasConflict on
    every later run) but start a new one against production v0001."""
    from flows import faults
    from flows.retrain import retrain

    args = {"recipe_path": DEMO, "overrides": PASSING, "workdir": str(tmp_path / "w")}
    monkeypatch.setenv("FEINSCHLIFF_FAULT_AT", "before-notify:raise-once")
    with pytest.raises(faults.InjectedFault):
        retrain(**args)
    monkeypatch.delenv("FEINSCHLIFF_FAULT_AT")
    root = home / "registry"
    assert read_aliases(root, USE_CASE)["production"] == "v0001"

    fake.feedback = "feedback-2"
    result = retrain(**args)

    assert result["promoted"] is True and result["version"] == "v0002"
    assert read_aliases(root, USE_CASE)["production"] == "v0002"
    assert _production_moves(root) == ["v0001", "v0002"]
    assert ("promoted", "v0002") in fake.events()


def test_a_rerun_after_a_kill_mid_promotion_does_not_undo_a_rollback(
    fake, home, tmp_path, monkeypatch, caplog
):
    """v0001 is production. A run moves production to v0002 and dies before the promotion is
    recorded as done; an operator rolls back to v0001. The rerun (same recipe, same feedback)
    resumes the run: it must find its promotion done (the audit log) and not promote v0002
    again over the rollback."""
    from flows import retrain as retrain_module
    from flows import tasks
    from flows.retrain import retrain

    root = home / "registry"
    first = retrain(recipe_path=DEMO, overrides=PASSING, workdir=str(tmp_path / "w"))
    assert first["version"] == "v0001"

    fake.feedback = "feedback-2"
    # a kill: no task retry gets past it (a raised fault would be retried and recovered)
    monkeypatch.setattr(
        retrain_module, "register_task", tasks.register_task.with_options(retries=0)
    )
    monkeypatch.setenv("FEINSCHLIFF_FAULT_AT", "register:after-alias-before-vllm:raise-once")
    args = {"recipe_path": DEMO, "overrides": PASSING, "workdir": str(tmp_path / "w")}
    with pytest.raises(Exception, match="injected fault"):
        retrain(**args)
    monkeypatch.delenv("FEINSCHLIFF_FAULT_AT")
    assert read_aliases(root, USE_CASE)["production"] == "v0002"
    rollback(root, USE_CASE, why="operator: v0002 is bad")

    rerun = retrain(**args)

    assert rerun["version"] == "v0002"
    assert read_aliases(root, USE_CASE)["production"] == "v0001"  # the rollback stands
    assert _production_moves(root) == ["v0001", "v0002", "v0001"]
    ledger = [json.loads(line) for line in (tmp_path / "w" / "ledger.jsonl").open()]
    assert any(r.get("recovered") for r in ledger)  # the promotion recorded as done
    assert "v0002 was promoted by this run, but production has since been moved to v0001" in (
        caplog.text
    )


def test_a_promotion_is_found_done_only_if_it_happened_after_its_intent(tmp_path):
    """The audit log's times are whole seconds: a move in the intent's second counts, an
    older promotion of the same version (before this run tried) does not."""
    from flows.tasks import _promoted_since

    log = tmp_path / USE_CASE / "audit.jsonl"
    log.parent.mkdir()
    entries = [
        {"at": "2025-01-01T10:00:00Z", "event": "alias", "alias": "production", "new": "v0002"},
        {"at": "2025-01-01T10:00:05Z", "event": "alias", "alias": "previous", "new": "v0002"},
        {"at": "2025-01-01T10:00:05Z", "event": "register", "alias": None, "new": "v0002"},
    ]
    log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    t = 1735725605.7  # 2025-01-01T10:00:05.7Z
    assert not _promoted_since(tmp_path, USE_CASE, "v0002", t)
    moved = {"at": "2025-01-01T10:00:05Z", "event": "alias", "alias": "production", "new": "v0002"}
    with log.open("a") as f:
        f.write(json.dumps(moved) + "\n")
    assert _promoted_since(tmp_path, USE_CASE, "v0002", t)
    assert not _promoted_since(tmp_path, USE_CASE, "v0003", t)


def test_an_evaluate_only_run_that_passes_the_gate_announces_no_promotion(
    fake, home, tmp_path, caplog
):
    """register=false (an evaluation triggered from the UI): nothing is registered, so the
    run neither reports nor announces a promotion."""
    from flows.retrain import retrain

    result = retrain(
        recipe_path=DEMO, overrides=PASSING, workdir=str(tmp_path / "w"), register=False
    )

    assert result["decision"]["promote"] is True  # the gate passed
    assert result["promoted"] is False and result["version"] is None
    assert versions(home / "registry", USE_CASE) == []
    [(event, details)] = fake.sent  # announced as what it is, not as a promotion
    assert event == "passed" and details["version"] is None
    assert "decision: PASSED the gate (not registered: register=false)" in caplog.text
    assert "PROMOTED" not in caplog.text


def test_training_progress_follows_step_lines_only(monkeypatch):
    """The trainer logs `step 10/200 loss ...` and, at evaluations, `step 10 eval loss ...`:
    the second has two numbers too, but is no step/total (it pushed 10/2.41 -> 100 %).

    ``update_progress_artifact`` is replaced by a recorder because the test checks every value
    pushed: a Prefect progress artifact keeps only its latest value, so a wrong 100 % between
    two step lines would be overwritten unseen. The real artifact, created and finished by the
    real flow: test_flow_orchestration.py::test_identical_rerun_is_served_from_cache."""
    from flows import tasks

    pushed: list[float] = []
    monkeypatch.setattr(tasks, "update_progress_artifact", lambda _id, value: pushed.append(value))
    handler = tasks._TrainProgress("artifact-id")
    log = logging.getLogger("feinschliff.train.trl_backend")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("step %d/%d loss %.4f", 10, 200, 1.93)
        log.info("step %d eval loss %.4f", 10, 2.41)
        log.info("step %d/%d loss %.4f", 20, 200, 1.71)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert pushed == [5.0, 10.0]
