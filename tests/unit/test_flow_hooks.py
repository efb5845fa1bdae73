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
    from flows.retrain import _ask_for_approval, _notify_failure

    sent = []
    monkeypatch.setattr(notify, "send", lambda event, use_case, data: sent.append(event))
    recipe = load_recipe(DEMO, ["gate.rules.2={rule: require_approval, timeout_s: 2}"])

    @flow(on_failure=[_notify_failure])
    def asks(recipe_path: str) -> bool:  # recipe_path: what the hook reads the use case from
        return _ask_for_approval(recipe, Decision(promote=False, results=[])).approved

    state = asks(DEMO, return_state=True)
    assert state.is_completed(), state.message
    assert state.result() is False
    assert sent == ["approval_needed"]


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
