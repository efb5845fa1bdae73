"""``prefect.yaml`` (the `prefect deploy --all` way) deploys what `deployments sync` deploys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.cli.deploy._models import PrefectYamlModel

from feinschliff.recipe_loader import load_recipe

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = PrefectYamlModel.model_validate(
    yaml.safe_load((ROOT / "prefect.yaml").read_text())
).deployments


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d.name)
def test_each_deployment_matches_its_recipe_and_runs_one_at_a_time(deployment):
    recipe = load_recipe(ROOT / deployment.parameters["recipe_path"])
    assert deployment.name == recipe.use_case
    assert deployment.entrypoint == "flows/retrain.py:retrain"
    assert (ROOT / deployment.entrypoint.split(":")[0]).exists()
    [schedule] = deployment.schedules
    assert recipe.schedule is not None
    assert (schedule.cron, schedule.timezone) == (recipe.schedule.cron, recipe.schedule.timezone)
    # no deployment concurrency limit: the server frees its slot when a run pauses for approval
    # (and the run crashes at its next lease renewal); retrain queues its deployed runs on a
    # global concurrency limit per use case instead (flows/retrain.py, _one_run_per_use_case)
    assert deployment.concurrency_limit is None
