"""`deployments sync` against Prefect's test harness: what a re-sync does to a deployment's
schedule (a cron the recipe dropped, a schedule switched off in the UI, --active/--paused, a
schedule with a prefect.yaml `slug`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo-de.yaml"
SUPPORT_DE = ROOT / "recipes" / "support-de-8b.yaml"
NAME = "retrain/support-de-demo"


@pytest.fixture
def sync(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    from flows.deployments import sync_deployments

    with get_client(sync_client=True) as client:
        with contextlib.suppress(ObjectAlreadyExists):
            client.create_work_pool(WorkPoolCreate(name="local", type="process"))
        with contextlib.suppress(ObjectNotFound):  # each test starts without the deployment
            client.delete_deployment(client.read_deployment_by_name(NAME).id)

    def run(*overrides: str, paused: bool | None = None):
        sync_deployments([DEMO], "local", paused=paused, overrides=list(overrides))
        with get_client(sync_client=True) as client:
            return client.read_deployment_by_name(NAME)

    return run


def _crons(deployment) -> list[tuple[str, str, bool]]:
    return [(s.schedule.cron, s.schedule.timezone, s.active) for s in deployment.schedules]


def test_a_dropped_schedule_is_cleared_and_a_changed_one_replaced(sync):
    assert _crons(sync()) == [("0 2 * * 1", "Europe/Berlin", True)]
    changed = sync("schedule.cron='30 4 * * 2'", "schedule.timezone=UTC")
    assert _crons(changed) == [("30 4 * * 2", "UTC", True)]  # replaced, not added
    assert _crons(sync("schedule=null")) == []  # no stale cron keeps retraining


def test_a_schedule_switched_off_in_the_ui_stays_off(sync):
    """The UI's per-schedule toggle, not the deployment's: a plain re-sync kept the deployment
    unpaused and recreated its schedule active, so the retraining started again."""
    from prefect.client.orchestration import get_client

    deployment = sync()
    with get_client(sync_client=True) as client:
        client.update_deployment_schedule(deployment.id, deployment.schedules[0].id, active=False)
    again = sync()
    assert _crons(again) == [("0 2 * * 1", "Europe/Berlin", False)]
    assert not again.paused
    moved = sync("schedule.cron='0 5 * * 1'")  # a new time does not switch it back on
    assert _crons(moved) == [("0 5 * * 1", "Europe/Berlin", False)]
    assert _crons(sync(paused=False)) == [("0 2 * * 1", "Europe/Berlin", True)]  # --active


def test_paused_and_active_flags_and_a_kept_pause(sync):
    assert sync(paused=True).paused
    kept = sync()
    assert kept.paused and _crons(kept)[0][2]  # paused as a whole, its schedule untouched
    assert not sync(paused=False).paused


def test_a_schedule_with_a_slug_is_one_line_and_nothing_changes(prefect_harness):
    """`schedules: - slug: weekly` in prefect.yaml (`prefect deploy`): Prefect then refuses a
    schedule update without slugs (HTTP 422), which came out as a DeploymentApplyError
    traceback after the recipes before it had been synced; and an update that drops the
    schedule would have kept the cron."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate, WorkPoolCreate
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    from tests.cli_helpers import run_cli

    name = "retrain/support-de"  # recipes/support-de-8b.yaml, deployed by `prefect deploy`
    with get_client(sync_client=True) as client:
        for pool in ("local", "gpu"):
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        for stale in (name, NAME):
            with contextlib.suppress(ObjectNotFound):
                client.delete_deployment(client.read_deployment_by_name(stale).id)
        weekly = DeploymentScheduleCreate(schedule=CronSchedule(cron="0 3 * * 0"), slug="weekly")
        client.create_deployment(
            client.create_flow_from_name("retrain"),
            "support-de",
            entrypoint="flows/retrain.py:retrain",
            schedules=[weekly],
        )
    try:
        code, said = run_cli("deployments", "sync", str(DEMO), str(SUPPORT_DE), "--pool", "gpu")
        assert code == 2, said
        assert "Traceback" not in said and len(said.strip().splitlines()) == 1
        assert f"prefect deployment schedule clear {name}" in said
        with get_client(sync_client=True) as client:
            kept = client.read_deployment_by_name(name)
            assert [(s.schedule.cron, s.slug) for s in kept.schedules] == [("0 3 * * 0", "weekly")]
            with pytest.raises(ObjectNotFound):  # the demo, before it in the command: not synced
                client.read_deployment_by_name(NAME)
            for schedule in kept.schedules:  # what the advised `schedule clear` does
                client.delete_deployment_schedule(kept.id, schedule.id)
        code, said = run_cli("deployments", "sync", str(SUPPORT_DE), "--pool", "gpu")
        assert code == 0, said
        with get_client(sync_client=True) as client:
            assert _crons(client.read_deployment_by_name(name)) == [
                ("0 3 * * 0", "Europe/Berlin", True)
            ]
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(client.read_deployment_by_name(name).id)
