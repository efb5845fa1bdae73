"""The retrain flow's Prefect edges under the test harness (no model): how an approval timeout
ends, that a crash notifies, and what `deployments sync` prints."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")


def test_an_approval_timeout_ends_completed_without_a_failure_notice(
    prefect_harness, home, monkeypatch
):
    """No answer in time is a rejection, and the run goes on: Prefect must not fail the run
    afterwards as a pause that was never resumed (which would notify 'failed' as well)."""
    from prefect import flow

    from feinschliff import notify
    from feinschliff.gate import Decision
    from feinschliff.recipe_loader import load_recipe
    from flows.approval import ask_for_approval
    from flows.retrain import _notify_failure

    sent = []
    monkeypatch.setattr(notify, "send", lambda event, use_case, data: sent.append(event))
    recipe = load_recipe(DEMO, ["gate.rules.2={rule: require_approval, timeout_s: 2}"])

    @flow(on_failure=[_notify_failure])
    def asks(recipe_path: str) -> bool:  # recipe_path: what the hook reads the use case from
        return ask_for_approval(recipe, Decision(promote=False, results=[])).approved

    state = asks(DEMO, return_state=True)
    assert state.is_completed(), state.message
    assert state.result() is False
    assert sent == ["approval_needed"]


def test_an_approval_timeout_never_meets_the_servers_pause_expiration(
    prefect_harness, home, monkeypatch
):
    """A real server's pause-expiration service (every 5 s; the test harness does not run it)
    fails a run whose pause timed out, often before the flow's own last poll: the run then
    went on and ended Completed, but after a Failed state and its event (automations that
    alert on failures fired) for a rejection that is no failure. Emulated here every 0.2 s."""
    import threading
    from datetime import UTC, datetime

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.states import Failed

    from feinschliff import notify
    from feinschliff.gate import Decision
    from feinschliff.recipe_loader import load_recipe
    from flows.approval import ask_for_approval

    monkeypatch.setattr(notify, "send", lambda event, use_case, data: None)
    recipe = load_recipe(DEMO, ["gate.rules.2={rule: require_approval, timeout_s: 2}"])
    done = threading.Event()

    def expire_pauses(run_id) -> None:  # prefect.server.services.pause_expirations
        with get_client(sync_client=True) as client:
            while not done.wait(0.2):
                state = client.read_flow_run(run_id).state
                expiry = state.state_details.pause_timeout if state.is_paused() else None
                if expiry is not None and expiry < datetime.now(UTC):
                    client.set_flow_run_state(
                        run_id, Failed(message="The flow was paused and never resumed."), True
                    )

    @flow
    def asks(recipe_path: str) -> str:
        watcher = threading.Thread(target=expire_pauses, args=(FlowRunContext.get().flow_run.id,))
        watcher.start()
        try:
            return ask_for_approval(recipe, Decision(promote=False, results=[])).by
        finally:
            done.set()
            watcher.join()

    state = asks(DEMO, return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == "timeout"
    with get_client(sync_client=True) as client:
        history = client.read_flow_run_states(state.state_details.flow_run_id)
    assert "FAILED" not in [s.type.value for s in history], history


def test_a_reviewers_answer_before_the_deadline_wins(prefect_harness, home, monkeypatch):
    import threading

    from prefect import flow
    from prefect.context import FlowRunContext
    from prefect.flow_runs import resume_flow_run

    from feinschliff import notify
    from feinschliff.gate import Decision
    from feinschliff.recipe_loader import load_recipe
    from flows.approval import ask_for_approval

    monkeypatch.setattr(notify, "send", lambda event, use_case, data: None)
    recipe = load_recipe(DEMO, ["gate.rules.2={rule: require_approval, timeout_s: 6}"])

    def review(run_id) -> None:
        for _ in range(50):
            try:
                return resume_flow_run(run_id, run_input={"approve": True, "reviewer": "anna"})
            except Exception:  # noqa: BLE001 - not paused yet
                threading.Event().wait(0.1)

    @flow
    def asks(recipe_path: str) -> tuple[bool, str]:
        threading.Thread(target=review, args=(FlowRunContext.get().flow_run.id,)).start()
        approval = ask_for_approval(recipe, Decision(promote=False, results=[]))
        return approval.approved, approval.by

    assert asks(DEMO) == (True, "anna")


def test_a_terminated_run_notifies(tmp_path):
    """SIGTERM (a pod eviction) crashes the run: it notifies as a failed one does."""
    script = textwrap.dedent(
        f"""
        import os, signal, time
        from prefect.settings import PREFECT_HOME, temporary_settings
        from prefect.testing.utilities import prefect_test_harness
        from feinschliff import notify
        import flows.retrain as r

        notify.send = lambda event, use_case, data: print("NOTIFY", event, use_case, flush=True)

        def killed(recipe):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)

        r.check_training_fits = killed
        with temporary_settings({{PREFECT_HOME: {str(tmp_path)!r}}}), prefect_test_harness(
            server_startup_timeout=120
        ):
            r.retrain(recipe_path={DEMO!r}, workdir={str(tmp_path / "w")!r})
        """
    )
    log = tmp_path / "out.log"
    with log.open("w") as out:  # a file, not a pipe: the harness's server outlives the process
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        proc.wait(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the orphaned harness server
    text = log.read_text()
    assert "Crashed" in text, text[-2000:]
    assert "NOTIFY failed support-de-demo" in text, text[-2000:]


def test_deployments_sync_prints_only_the_deployment_names(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    from feinschliff.cli import app

    with get_client(sync_client=True) as client:
        for pool in ("local", "gpu"):
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    got = CliRunner().invoke(app, ["deployments", "sync", DEMO, "--train-pool", "gpu"])
    assert got.exit_code == 0, got.output
    assert got.stdout == "retrain/support-de-demo\ntrain-stage/support-de-demo\n"
