"""`deployments sync --prune` against Prefect's test harness: a recipe deleted or renamed must
not leave its deployment retraining on its cron forever, and nothing but such deployments goes."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")
KEPT = "retrain/support-de-demo"
OLD = ["retrain/old-demo", "train-stage/old-demo"]  # a use case renamed away from the demo


@pytest.fixture
def server(prefect_harness):
    """Pools `local` and `gpu`, and the deployments of a renamed use case (`old-demo`, with its
    training deployment), of the demo, of another flow and of another project's `retrain`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    from flows.deployments import sync_deployments

    with get_client(sync_client=True) as client:
        for pool in ("local", "gpu"):
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    sync_deployments([Path(DEMO)], "local", train_pool="gpu", overrides=["use_case=old-demo"])
    sync_deployments([Path(DEMO)], "local")
    others = {"other-flow/old-demo": "other.py:other", "retrain/foreign": "elsewhere.py:retrain"}
    with get_client(sync_client=True) as client:
        for name, entrypoint in others.items():
            flow, deployment = name.split("/")
            client.create_deployment(
                client.create_flow_from_name(flow), deployment, entrypoint=entrypoint
            )
    yield list(others)
    _delete(*OLD, *others)


def _names() -> set[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        return {f"{flows[d.flow_id]}/{d.name}" for d in client.read_deployments()}


def _delete(*names: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for name in names:
            with contextlib.suppress(ObjectNotFound):
                client.delete_deployment(client.read_deployment_by_name(name).id)


def test_prune_deletes_only_the_deployments_of_use_cases_no_recipe_has(server):
    code, said = run_cli("deployments", "sync", DEMO, "--prune")
    assert code == 0, said
    assert said.splitlines() == [KEPT, *(f"deleted {name}" for name in OLD)]
    left = _names()
    assert KEPT in left and set(server) <= left  # other flows, another project's `retrain`
    assert not left & set(OLD)
    code, said = run_cli("deployments", "sync", DEMO, "--prune")  # nothing left to prune
    assert (code, said.splitlines()) == (0, [KEPT])


def test_without_prune_a_sync_of_some_recipes_deletes_nothing(server):
    before = _names()
    code, said = run_cli("deployments", "sync", DEMO)
    assert (code, said.splitlines()) == (0, [KEPT])
    assert _names() == before


def test_dry_run_prints_what_prune_would_delete_and_changes_nothing(server):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        demo = client.read_deployment_by_name(KEPT)
    before = _names()
    code, said = run_cli("deployments", "sync", DEMO, "--prune", "--dry-run", "--paused")
    assert code == 0, said
    assert said.splitlines() == [f"would delete {name}" for name in OLD]
    assert _names() == before
    with get_client(sync_client=True) as client:  # not synced either: still active
        assert client.read_deployment_by_name(KEPT).updated == demo.updated
    code, said = run_cli("deployments", "sync", DEMO, "--dry-run")
    assert code == 2 and "add --prune" in said
    assert _names() == before


def test_prune_deletes_a_training_deployment_a_sync_without_train_pool_no_longer_uses(server):
    """Synced once with `--train-pool gpu`, then without: retrain trains in-process, so the
    `train-stage/` deployment of that use case is left over and goes with `--prune`."""
    from flows.deployments import sync_deployments

    trained = "train-stage/support-de-demo"
    sync_deployments([Path(DEMO)], "local", train_pool="gpu")
    assert trained in _names()
    try:
        code, said = run_cli("deployments", "sync", DEMO, "--prune")
        assert code == 0, said
        assert f"deleted {trained}" in said.splitlines()
        assert trained not in _names() and KEPT in _names()
        code, said = run_cli("deployments", "sync", DEMO, "--train-pool", "gpu", "--prune")
        assert code == 0, said
        assert trained in said.splitlines() and not [
            x for x in said.splitlines() if "deleted" in x and "support-de-demo" in x
        ]
        assert trained in _names()  # with the pool it is wanted, and kept
    finally:
        _delete(trained)
