"""The retrain flow's edges a probe against a real Prefect server found, under the test harness
with stand-in stages (no model): the gate artifact of an evaluate-only run, what a reviewer
sees while the run waits for approval, a train deployment that does not exist, a workdir that
cannot be one, and what a run waiting for its use case's concurrency slot says."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")
METRIC = "de_wissen_mc/acc_norm"


def _gate(*extra: str) -> list[str]:
    rules = ", ".join([f"{{rule: min, metric: {METRIC}, threshold: 0.1}}", *extra])
    return [f"gate.rules=[{rules}]"]


@pytest.fixture()
def stages(monkeypatch, home):
    """Stand-in stages: ``fresh`` writes a tiny output per stage (evaluate: a report whose
    metric passes the gate) and records the stage's name; nothing is trained or evaluated,
    no model is read, the registry is empty and notifications are recorded."""
    import flows.retrain as r
    from feinschliff import notify
    from feinschliff.artifacts import AdapterRef, DatasetRef, ReportRef
    from flows import artifacts

    ran: list[str] = []
    sent: list[str] = []

    def fresh(task, **kwargs):
        ran.append(task.name)
        out = Path(kwargs["out"])
        out.mkdir(parents=True, exist_ok=True)
        if task.name == "evaluate":
            report = {"metrics": {"candidate": {METRIC: {"value": 0.5}}}}
            (out / "report.json").write_text(json.dumps(report))
        else:
            (out / "rows.jsonl").write_text("{}\n")
        ref = {"ingest": DatasetRef, "train": AdapterRef, "evaluate": ReportRef}[task.name]
        return ref(path=str(out), sha256=f"{task.name:0<64}"[:64])

    monkeypatch.setattr(r, "fresh", fresh)
    monkeypatch.setattr(r, "check_training_fits", lambda recipe: None)
    monkeypatch.setattr(r, "production_version", lambda recipe: None)
    for name in ("publish_ingest", "publish_training", "publish_evaluation"):
        monkeypatch.setattr(artifacts, name, lambda *a, **k: None)
    monkeypatch.setattr(notify, "send", lambda event, use_case, data, urls=None: sent.append(event))
    return ran, sent


def _gate_artifacts(flow_run_id) -> list[str]:
    """The run's gate artifacts' markdown, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])),
            sort=ArtifactSort.CREATED_DESC,
        )
    return [a.data for a in reversed(found) if a.key == "support-de-demo-gate"]


# 1. an evaluate-only run that passes is PASSED, not PROMOTED, in the gate artifact too


def test_the_gate_heading_of_an_evaluate_only_run_says_passed():
    from feinschliff.gate import Decision, RuleResult
    from flows.artifacts import decision_markdown

    ok = RuleResult(rule="min", metric="t/acc", value=0.6, threshold=0.5, passed=True, detail="")
    passed = Decision(promote=True, results=[ok])
    md = decision_markdown(passed, None, register=False)
    assert md.startswith("## Gate: **PASSED** (not registered: register=false)\n")
    assert "PROMOTED" not in md and "| min | t/acc | 0.6 | 0.5 | PASS |" in md
    assert decision_markdown(passed, "v0003").startswith("## Gate: **PROMOTED** as `v0003`")


def test_an_evaluate_only_run_publishes_passed_not_promoted(prefect_harness, stages, tmp_path):
    from flows.retrain import retrain

    state = retrain(
        recipe_path=DEMO,
        overrides=_gate(),
        workdir=str(tmp_path / "w"),
        register=False,
        return_state=True,
    )
    assert state.is_completed(), state.message
    assert state.result()["promoted"] is False
    (gate,) = _gate_artifacts(state.state_details.flow_run_id)
    assert gate.startswith("## Gate: **PASSED** (not registered: register=false)"), gate
    assert stages[1] == ["passed"]


# 2. a reviewer sees the gate's results while the run waits for the answer


def test_the_reviewer_sees_the_gate_results_while_the_run_waits(prefect_harness, stages, tmp_path):
    """The gate artifact was published only after the answer and the pause had no
    description: the reviewer approved blind. Now the pending gate table is published before
    the pause and heads the resume form; the final decision replaces it after the answer."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    seen: dict = {}
    paused = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
    )
    with get_client(sync_client=True) as client:  # runs another test left paused on the server
        earlier = {r.id for r in client.read_flow_runs(flow_run_filter=paused)}

    def review() -> None:
        deadline = time.time() + 120
        with get_client(sync_client=True) as client:
            while time.time() < deadline and not (
                runs := [
                    r for r in client.read_flow_runs(flow_run_filter=paused) if r.id not in earlier
                ]
            ):
                time.sleep(0.2)
            if not runs:
                return
            run_id = runs[0].id
            until = time.time() + 10  # the form's description is saved just after the pause
            while time.time() < until and "description" not in seen:
                inputs = client.filter_flow_run_input(run_id, "paused-", 10, set())
                for i in inputs:
                    if i.key.endswith("-description"):
                        seen["description"] = i.decoded_value
                time.sleep(0.2)
            seen["artifacts"] = _gate_artifacts(run_id)
        resume_flow_run(run_id, run_input={"approve": False, "reviewer": "anna"})

    reviewer = threading.Thread(target=review, daemon=True)
    reviewer.start()
    from flows.retrain import retrain

    state = retrain(
        recipe_path=DEMO,
        overrides=_gate("{rule: require_approval, timeout_s: 120}"),
        workdir=str(tmp_path / "w"),
        return_state=True,
    )
    reviewer.join(timeout=30)
    assert state.is_completed(), state.message
    assert state.result()["promoted"] is False
    during = seen.get("artifacts")
    assert during, "no gate artifact while the run waited for approval"
    assert during[-1].startswith("## Gate: **AWAITING APPROVAL**"), during[-1]
    assert f"| min | {METRIC} | 0.5 | 0.1 | PASS |" in during[-1]
    pending = "| require_approval | - | None | None | PENDING | awaiting human approval |"
    assert pending in during[-1]
    description = seen.get("description") or ""
    assert f"| min | {METRIC} | 0.5 | 0.1 | PASS |" in description, seen
    assert "No answer within 120 s rejects" in description
    final = _gate_artifacts(state.state_details.flow_run_id)[-1]
    assert final.startswith("## Gate: **REJECTED**") and "rejected by anna" in final
    assert stages[1] == ["approval_needed", "rejected"]
    # the audit log says which candidate was answered (the train output's hash, as the
    # evaluation report names it), not only who answered
    from feinschliff import registry
    from feinschliff.pipeline import registry_root
    from feinschliff.recipe_loader import load_recipe

    recipe = load_recipe(DEMO)
    log = registry.audit_log(registry_root(recipe), recipe.use_case)
    (entry,) = [e for e in log if e["event"] == "approval"]
    assert (entry["candidate"], entry["reviewer"], entry["approved"]) == (
        f"{'train':0<64}",
        "anna",
        False,
    )


# 5. a train deployment that does not exist fails at the start, naming it


def _train_stage_deployment(name: str) -> uuid.UUID:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(f"train-stage/{name}").id
        except ObjectNotFound:
            flow_id = client.create_flow_from_name("train-stage")
            return client.create_deployment(flow_id=flow_id, name=name)


def test_a_missing_train_deployment_fails_before_ingest(prefect_harness, stages, tmp_path):
    """It failed after ingest (and generate) as "ObjectNotFound: None"."""
    from flows.retrain import retrain

    _train_stage_deployment("support-de-demo")
    with pytest.raises(ValueError) as exc:
        retrain(
            recipe_path=DEMO,
            overrides=_gate(),
            workdir=str(tmp_path / "w"),
            train_deployment="train-stage/nowhere",
        )
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith("train_deployment train-stage/nowhere does not exist"), message
    assert "train-stage/support-de-demo" in message  # the ones that exist
    assert stages[0] == []  # no stage ran


def test_an_existing_train_deployment_passes_the_check(
    prefect_harness, stages, tmp_path, monkeypatch
):
    import flows.retrain as r
    from feinschliff.artifacts import AdapterRef
    from flows.train_stage import check_train_deployment

    ident = _train_stage_deployment("support-de-demo")
    check_train_deployment("train-stage/support-de-demo")
    check_train_deployment(str(ident))  # run_deployment takes an id as well
    with pytest.raises(ValueError, match="does not exist"):
        check_train_deployment(str(uuid.uuid4()))
    with pytest.raises(ValueError, match="does not exist"):
        check_train_deployment("no-slash")

    trained = []

    def via(deployment, recipe, recipe_path, overrides, data, out, production):
        trained.append(deployment)
        out.mkdir(parents=True, exist_ok=True)
        return AdapterRef(path=str(out), sha256="1" * 64)

    monkeypatch.setattr(r, "train_via_deployment", via)
    got = r.retrain(
        recipe_path=DEMO,
        overrides=_gate(),
        workdir=str(tmp_path / "w"),
        register=False,
        train_deployment="train-stage/support-de-demo",
    )
    assert trained == ["train-stage/support-de-demo"] and got["promoted"] is False


# 6. a workdir that is a file, or lies under one: one line, as `feinschliff run` says it


@pytest.mark.parametrize("under", [False, True])
def test_a_workdir_that_cannot_be_a_folder_fails_in_one_line(
    prefect_harness, stages, tmp_path, under
):
    from feinschliff.artifacts import OutputInUse
    from feinschliff.cli.stages import _check_workdir_free
    from flows.retrain import retrain

    afile = tmp_path / "notes.txt"
    afile.write_text("not a folder")
    work = afile / "run" if under else afile
    with pytest.raises(OutputInUse) as exc:
        retrain(recipe_path=DEMO, overrides=_gate(), workdir=str(work))
    why = "Not a directory" if under else "File exists"
    assert str(exc.value) == f"workdir {work}: {why}"
    with pytest.raises(Exception) as cli:  # the CLI's own check: the same words
        _check_workdir_free(work)
    assert str(cli.value) == str(exc.value)
    assert stages[0] == []


# 7. a run waiting for its use case's slot says how long a crashed holder keeps it


def test_a_waiting_run_says_when_a_crashed_holder_frees_the_slot(
    prefect_harness, monkeypatch, caplog
):
    """A SIGKILLed run keeps `retrain-<use_case>` until its lease expires: the waiting run only
    said it waits while another run holds it."""
    import types

    import flows.retrain as r

    deployed = types.SimpleNamespace(flow_run=types.SimpleNamespace(deployment_id=uuid.uuid4()))
    monkeypatch.setattr(r, "FlowRunContext", types.SimpleNamespace(get=lambda: deployed))
    monkeypatch.setattr(r, "get_run_logger", lambda: logging.getLogger("test-retrain"))
    taken = []
    real = r.concurrency

    def spy(*args, **kwargs):
        taken.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(r, "concurrency", spy)
    use_case = f"probe-{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.INFO, logger="test-retrain"), r._one_run_per_use_case(use_case):
        pass
    assert taken and taken[0]["lease_duration"] == r.LEASE_S
    (line,) = [m for m in caplog.messages if "retrain-" + use_case in m]
    assert "lease expires" in line and f"up to {r.LEASE_S} s after it died" in line, line
