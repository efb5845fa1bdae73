"""Orchestration behaviour under Prefect's test harness: cached reruns, human approval,
notifications. Uses the real demo model with tiny settings."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from feinschliff.registry import audit_log, versions

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")
FAST = [
    "train.hyperparameters.max_steps=2",
    "train.hyperparameters.save_steps=1",
    "train.hyperparameters.max_length=128",
    "evaluate.limit=6",
    "evaluate.heldout=false",
]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One run directory for the module: stages cached by one test are reused by the next."""
    return str(tmp_path_factory.mktemp("run"))


def test_identical_rerun_is_served_from_cache(prefect_harness, demo_model, home, tmp_path):
    """Its own workdir: the first run must really train and evaluate."""
    from flows.retrain import retrain

    args = {
        "recipe_path": DEMO,
        "overrides": FAST + ["gate.rules.1.threshold=1000"],
        "workdir": str(tmp_path / "w"),
    }
    t0 = time.perf_counter()
    first = retrain(**args)
    first_s = time.perf_counter() - t0
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

    with get_client(sync_client=True) as client:
        progress = client.read_artifacts(
            artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"]))
        )
    assert any(a.data == 100.0 for a in progress)  # the training progress artifact finished
    markers = [tmp_path / "w" / stage / ".complete" for stage in ("train", "evaluate")]
    stamps = [m.stat().st_mtime_ns for m in markers]
    t0 = time.perf_counter()
    second = retrain(**args)
    second_s = time.perf_counter() - t0
    assert first["report"] == second["report"]
    assert [m.stat().st_mtime_ns for m in markers] == stamps  # served from the cache
    # a gross bound only: Prefect round-trips per cached task slow down on a loaded machine
    assert second_s <= 0.5 * first_s, (first_s, second_s)
    # a changed evaluate section reruns evaluation but not training
    marker, stamp = markers[0], stamps[0]
    third = retrain(**{**args, "overrides": args["overrides"] + ["evaluate.limit=5"]})
    assert marker.stat().st_mtime_ns == stamp
    report = json.loads(Path(third["report"]).read_text())
    assert report["metrics"]["candidate"]["de_wissen_mc/acc"]["samples"] == 5


def test_rejection_notifies_exactly_once(prefect_harness, demo_model, home, workdir, webhook):
    from flows.retrain import retrain

    _, receiver = webhook
    result = retrain(
        recipe_path=DEMO, overrides=FAST + ["gate.rules.1.threshold=1000"], workdir=workdir
    )
    assert result["promoted"] is False
    assert len(receiver) == 1
    assert "rejected" in receiver[0]["title"] and "min_samples" in receiver[0]["message"]
    assert "de_wissen_mc/acc" in receiver[0]["message"]  # key metrics travel with the decision
    stored = json.loads((Path(result["report"]).parent / "decision.json").read_text())
    assert stored["promote"] is False and stored == result["decision"]


def _approval_rules(timeout: int) -> list[str]:
    return [
        "gate.rules.0.tolerance=1.0",
        "gate.rules.1.threshold=6",
        f"gate.rules.2={{rule: require_approval, timeout_s: {timeout}}}",
    ]


def test_approval_timeout_rejects_and_is_audited(prefect_harness, demo_model, home, workdir):
    from flows.retrain import retrain

    result = retrain(recipe_path=DEMO, overrides=FAST + _approval_rules(3), workdir=workdir)
    assert result["promoted"] is False
    approval = [r for r in result["decision"]["results"] if r["rule"] == "require_approval"][0]
    assert "timeout" in approval["detail"]
    events = audit_log(home / "registry", "support-de-demo")
    assert [e for e in events if e["event"] == "approval"][0]["approved"] is False
    assert versions(home / "registry", "support-de-demo") == []


def test_approval_from_the_ui_promotes(prefect_harness, demo_model, home, workdir):
    """A reviewer answers the paused run's form (the same API call the UI makes)."""
    from prefect.flow_runs import resume_flow_run

    from flows.retrain import retrain

    earlier = _paused_run_ids()  # paused runs another test left on the shared server

    def approve():
        deadline = time.time() + 600
        while time.time() < deadline:
            if paused := _paused_run_ids() - earlier:
                resume_flow_run(
                    paused.pop(),
                    run_input={"approve": True, "reviewer": "anna", "comment": "sieht gut aus"},
                )
                return
            time.sleep(1)

    t = threading.Thread(target=approve, daemon=True)
    t.start()
    result = retrain(recipe_path=DEMO, overrides=FAST + _approval_rules(600), workdir=workdir)
    t.join(timeout=5)
    assert result["promoted"] is True and result["version"] == "v0001"
    events = audit_log(home / "registry", "support-de-demo")
    approval = [e for e in events if e["event"] == "approval"][0]
    assert approval["approved"] is True and approval["reviewer"] == "anna"


def _paused_run_ids() -> set:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStateType

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state={"type": FlowRunFilterStateType(any_=["PAUSED"])})
        )
    return {r.id for r in runs}


def _approve_when_paused(stop: threading.Event, earlier: frozenset = frozenset()) -> None:
    """The reviewer: approve the first run that pauses, not one of ``earlier`` (runs another
    test left paused on the shared server), with the same API call the UI makes."""
    from prefect.flow_runs import resume_flow_run

    while not stop.is_set():
        if paused := _paused_run_ids() - earlier:
            resume_flow_run(paused.pop(), run_input={"approve": True, "reviewer": "anna"})
            return
        time.sleep(1)


def test_a_rerun_after_its_own_promotion_decides_as_the_first_attempt_did(
    prefect_harness, demo_model, home, tmp_path, webhook, monkeypatch
):
    """A production version exists. The next run warm-starts from it, is approved by a
    reviewer, promotes its candidate and then fails (injected, after registration). Its rerun
    resumes the run: it continues and compares with the production the first attempt saw (not
    the candidate it promoted itself), so training and evaluation are reused, the reviewer is
    not asked again, and nothing is registered or announced twice."""
    from flows import faults
    from flows.retrain import retrain

    _, received = webhook
    work = str(tmp_path / "w")
    passing = ["gate.rules.0.tolerance=1.0", "gate.rules.1.threshold=6"]
    assert retrain(recipe_path=DEMO, overrides=FAST + passing, workdir=work)["version"] == "v0001"

    args = {
        "recipe_path": DEMO,
        "overrides": FAST + _approval_rules(120) + ["train.init_from=production"],
        "workdir": work,
    }
    monkeypatch.setenv("FEINSCHLIFF_FAULT_AT", "after-register:raise-once")
    monkeypatch.setattr(faults, "_raised", set())
    stop = threading.Event()
    earlier = frozenset(_paused_run_ids())
    reviewer = threading.Thread(target=_approve_when_paused, args=(stop, earlier), daemon=True)
    reviewer.start()
    with pytest.raises(faults.InjectedFault):
        retrain(**args)
    stop.set()
    reviewer.join(timeout=30)
    monkeypatch.delenv("FEINSCHLIFF_FAULT_AT")
    root = home / "registry"
    assert versions(root, "support-de-demo") == ["v0001", "v0002"]
    stamps = {
        stage: (tmp_path / "w" / stage / ".complete").stat().st_mtime_ns
        for stage in ("train", "evaluate")
    }

    rerun = retrain(**args)  # nobody approves now: asking again would time out and reject

    assert rerun["promoted"] is True and rerun["version"] == "v0002"
    assert versions(root, "support-de-demo") == ["v0001", "v0002"]
    for stage, stamp in stamps.items():  # reused, not redone against production = v0002
        assert (tmp_path / "w" / stage / ".complete").stat().st_mtime_ns == stamp, stage
    report = json.loads(Path(rerun["report"]).read_text())
    assert "production" in report["metrics"]  # compared with v0001, as the first attempt was
    metrics = json.loads((tmp_path / "w" / "train" / "metrics.json").read_text())
    assert metrics["init_from"] == "support-de-demo/v0001"
    events = audit_log(root, "support-de-demo")
    assert sum(e["event"] == "approval" for e in events) == 1
    moves = [e["new"] for e in events if e["event"] == "alias" and e["alias"] == "production"]
    assert moves == ["v0001", "v0002"]
    titles = [g["title"] for g in received]
    assert sum("approval" in t for t in titles) == 1, titles
    assert sum("promoted" in t for t in titles) == 2, titles  # v0001, then v0002 once
    assert "feinschliff: support-de-demo run failed" in titles  # the use case, not the file


def test_a_failed_run_whose_production_moved_meanwhile_is_not_resumed(
    prefect_harness, demo_model, home, tmp_path, monkeypatch
):
    """A run evaluates against "no production" and fails (injected, before the gate). Another
    run then promotes v0001. The next run with the same recipe must not resume the failed
    one: its recorded baseline is stale and its promotion would fail the compare-and-swap
    (AliasConflict) on every later scheduled run. It starts a new run instead, re-evaluates
    against v0001 and promotes."""
    from flows import faults
    from flows.retrain import retrain

    passing = FAST + ["gate.rules.0.tolerance=1.0", "gate.rules.1.threshold=6"]
    args = {"recipe_path": DEMO, "overrides": passing, "workdir": str(tmp_path / "w")}
    monkeypatch.setenv("FEINSCHLIFF_FAULT_AT", "after-evaluate:raise-once")
    monkeypatch.setattr(faults, "_raised", set())
    with pytest.raises(faults.InjectedFault):
        retrain(**args)
    monkeypatch.delenv("FEINSCHLIFF_FAULT_AT")
    # another seed: an identical adapter would be registered as the same version
    other_args = [*passing, "train.hyperparameters.seed=7"]
    other = retrain(recipe_path=DEMO, overrides=other_args, workdir=str(tmp_path / "other"))
    assert other["version"] == "v0001"

    rerun = retrain(**args)

    assert rerun["promoted"] is True and rerun["version"] == "v0002"
    report = json.loads(Path(rerun["report"]).read_text())
    assert "production" in report["metrics"]  # compared with v0001, not with "nothing"
    ledger = [json.loads(line) for line in (tmp_path / "w" / "ledger.jsonl").open()]
    assert any("abandoned" in r for r in ledger)


def _register_inputs(demo_ingest, demo_adapter, tmp_path):
    """What register_task gets from the flow: a recipe, refs, a report and a passing decision."""
    from feinschliff.artifacts import ReportRef, mark_complete
    from feinschliff.gate import Decision
    from feinschliff.recipe_loader import load_recipe

    report_dir = tmp_path / "report"
    report_dir.mkdir()
    (report_dir / "report.json").write_text(json.dumps({"metrics": {}}))
    report = ReportRef(path=str(report_dir), sha256=mark_complete(report_dir, stage="evaluate"))
    recipe = load_recipe(DEMO, FAST)
    return recipe, demo_ingest, demo_adapter, report, Decision(promote=True, results=[])


def _other_adapter(demo_adapter, tmp_path):
    """Another candidate: same weights, another model card, so another registry version."""
    import shutil

    from feinschliff.artifacts import AdapterRef, mark_complete

    other = tmp_path / "other"
    shutil.copytree(demo_adapter.dir, other, ignore=shutil.ignore_patterns(".complete"))
    (other / "adapter" / "README.md").write_text("concurrent promotion\n")
    return AdapterRef(path=str(other), sha256=mark_complete(other, stage="train"))


@pytest.mark.parametrize("moved", [True, False], ids=["production-moved", "production-unchanged"])
def test_register_retry_compare_and_swaps_against_the_production_seen_at_evaluation(
    prefect_harness, demo_ingest, demo_adapter, home, tmp_path, monkeypatch, moved
):
    """The first attempt fails transiently after writing the version (fault hook), Prefect
    retries. The retry promotes against the production version captured before evaluation (a
    task input): if another promotion moved production meanwhile it fails with AliasConflict
    (and is not retried again) instead of overriding it."""
    from feinschliff.pipeline import registry_root
    from feinschliff.registry import promote, read_aliases, register_adapter
    from feinschliff.serving.preflight import base_target
    from flows import faults, tasks
    from flows.tasks import register_task

    recipe, data, adapter, report, decision = _register_inputs(demo_ingest, demo_adapter, tmp_path)
    root = registry_root(recipe)
    first = register_adapter(
        root,
        recipe.use_case,
        _other_adapter(demo_adapter, tmp_path),
        {},
        target=base_target(recipe),
    )
    seen = None  # what the flow captured before evaluation: no production yet
    if moved:  # another promotion after the evaluation captured `seen`
        promote(root, recipe.use_case, first, why="a concurrent promotion")
    monkeypatch.setenv("FEINSCHLIFF_FAULT_AT", "register:after-version:raise-once")
    monkeypatch.setattr(faults, "_raised", set())
    promotions = []  # a spy: counts the promote attempts, calls the real one
    real = tasks._promote
    monkeypatch.setattr(tasks, "_promote", lambda *a: promotions.append(a[2]) or real(*a))
    ledger = tmp_path / "ledger.jsonl"
    task = register_task.with_options(retry_delay_seconds=0)
    state = task(recipe, data, adapter, report, decision, seen, ledger, "run-1", return_state=True)

    # attempt 1 failed at the fault before promoting; attempt 2 promoted against `seen`; a
    # lost compare-and-swap is not retried
    assert faults._raised == {"register:after-version"} and promotions == [seen]
    aliases = read_aliases(root, recipe.use_case)
    events = audit_log(root, recipe.use_case)
    moves = [e for e in events if e["event"] == "alias" and e["alias"] == "production"]
    if moved:
        assert state.is_failed() and "AliasConflict" in state.message
        assert aliases["production"] == first  # the concurrent promotion stands
        assert [m["new"] for m in moves] == [first]
    else:
        assert state.is_completed() and aliases["production"] == state.result() == "v0002"
        assert [m["new"] for m in moves] == ["v0002"]
    assert versions(root, recipe.use_case) == [first, "v0002"]  # the version written once
