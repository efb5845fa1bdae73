"""Human approval of deployed runs (executed as a worker executes them: `python -m
prefect.engine` for a flow run of the deployment) and of evaluate-only runs. Uses the real
demo model with tiny settings."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from feinschliff.registry import audit_log
from tests.integration.test_flow_orchestration import DEMO, FAST

ROOT = Path(__file__).resolve().parents[2]
PASSING = ["gate.rules.0.tolerance=1.0", "gate.rules.1.threshold=6"]

pytestmark = pytest.mark.integration


def _approval(timeout: int) -> list[str]:
    return [f"gate.rules.2={{rule: require_approval, timeout_s: {timeout}}}"]


def _wait(what, check, timeout: float, every: float = 2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if got := check():
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_second_deployed_run_waits_while_the_first_awaits_approval(
    prefect_harness, demo_model, home, tmp_path
):
    """A deployment's own concurrency limit is freed by the server when a run pauses: a second
    run started meanwhile (and failed on the work directory's lock), and the paused run
    crashed at its lease renewal 225 s after it started (checked past that point by the
    reliability suite's long row, tests/reliability/test_approval_pause.py). Now the second
    run waits, its work not started, until the reviewer answers the first."""
    paused_deployed_run_keeps_its_slot(tmp_path, survive_s=0)


def paused_deployed_run_keeps_its_slot(tmp_path: Path, survive_s: float) -> None:
    """Two runs of the demo deployment, executed as a worker executes them; the first pauses
    for approval. ``survive_s``: also check the paused run is still paused that many seconds
    after it started (the engine renews a deployment lease at 225 s)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import get_current_settings
    from prefect.states import Cancelled, Pending

    from flows.deployments import sync_deployments

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name="local", type="process"))
    sync_deployments([Path(DEMO)], "local", overrides=FAST + PASSING + _approval(900))
    settings = get_current_settings()
    env = dict(
        os.environ,
        PREFECT_API_URL=settings.api.url,
        PREFECT_HOME=str(settings.home),
        PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(settings.results.local_storage_path),
    )
    procs, run_ids = [], []

    def start(tag: str):
        with get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name("retrain/support-de-demo")
            run = client.create_flow_run_from_deployment(dep.id)
            client.set_flow_run_state(run.id, Pending())  # what a worker does before starting
        run_ids.append(run.id)
        with (tmp_path / f"{tag}.log").open("w") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "prefect.engine"],
                    env={**env, "PREFECT__FLOW_RUN_ID": str(run.id)},
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        return run.id

    def state(run_id):
        with get_client(sync_client=True) as client:
            return client.read_flow_run(run_id).state

    def task_runs(run_id):
        with get_client(sync_client=True) as client:
            return client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
            )

    try:
        first = start("first")
        _wait("the first run to pause", lambda: state(first).is_paused(), 900)
        with get_client(sync_client=True) as client:
            started = client.read_flow_run(first).start_time.timestamp()
        second = start("second")
        _wait("the second run to start", lambda: not state(second).is_pending(), 120)
        time.sleep(20)  # long enough for it to load the recipe and try the work directory
        assert state(second).is_running(), state(second).message
        assert task_runs(second) == []  # its work has not started

        if survive_s:  # past the point where the paused run used to crash
            time.sleep(max(0.0, started + survive_s - time.time()))
        assert state(first).is_paused(), state(first).message
        assert state(second).is_running() and task_runs(second) == []

        resume_flow_run(first, run_input={"approve": True, "reviewer": "test"})
        procs[0].wait(timeout=300)
        assert state(first).is_completed(), state(first).message
        # the slot is free: the second run starts its work now
        _wait("the second run's first task", lambda: task_runs(second), 300)
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        # killed runs keep their last state on the shared server (a run that reached its own
        # pause would stay Paused, and another test's reviewer would answer it): end them
        with get_client(sync_client=True) as client:
            for run_id in run_ids:
                if not client.read_flow_run(run_id).state.is_final():
                    client.set_flow_run_state(run_id, Cancelled(), force=True)


def test_an_evaluate_only_run_does_not_ask_for_approval(
    prefect_harness, demo_model, home, tmp_path, webhook
):
    """register=false registers nothing: no human is asked, the rule passes as not asked."""
    from flows.retrain import retrain

    _, receiver = webhook
    t0 = time.time()
    result = retrain(
        recipe_path=DEMO,
        overrides=FAST + PASSING + _approval(5),
        workdir=str(tmp_path / "w"),
        register=False,
    )
    approval = [r for r in result["decision"]["results"] if r["rule"] == "require_approval"]
    assert approval[0]["passed"] and "not asked" in approval[0]["detail"], approval
    assert result["decision"]["promote"] and not result["promoted"]
    assert [m["title"] for m in receiver] == [
        "feinschliff: support-de-demo passed the gate (not registered: register=false)"
    ]
    registry = home / "registry"
    events = audit_log(registry, "support-de-demo") if registry.exists() else []
    assert not [e for e in events if e["event"] == "approval"]
    assert time.time() - t0 < 600
