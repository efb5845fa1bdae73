"""Create or update one Prefect deployment per recipe (`feinschliff deployments sync`).

Each deployment runs ``flows/retrain.py:retrain`` from this checkout on a work pool, with the
recipe path as its parameter and the recipe's ``schedule`` (cron + timezone) as its schedule.
Re-running the sync updates deployments in place (same name), so it is idempotent: it
replaces the schedule (a recipe without ``schedule`` clears it) and keeps a deployment paused
or its schedule switched off in the UI unless told otherwise (``--active``).
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import Flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron

from feinschliff.paths import project_root
from feinschliff.recipe_loader import load_recipe


class PrefectSetupError(Exception):
    """The Prefect API is not set, not reachable, or lacks a work pool: nothing was deployed.
    ``code`` follows the CLI's exit codes (2: fix the setup or arguments, 1: other failure)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# One training per use case at a time (train-stage runs share checkpoints): a second waits in
# the queue. Not for `retrain`: the server frees a deployment slot when a run pauses for
# approval and the paused run then crashes; retrain queues on a global concurrency limit
# of its own instead (flows/retrain.py: _one_run_per_use_case).
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def sync_deployments(
    recipes: list[Path],
    work_pool: str,
    *,
    paused: bool | None = None,
    train_pool: str | None = None,
    overrides: list[str] | None = None,
) -> list[str]:
    """Returns the deployment names created or updated: `retrain/<use_case>` and, with
    ``train_pool``, `train-stage/<use_case>` on that pool (retrain then trains through it).
    ``paused``: None keeps an existing deployment's state (a new one is active)."""
    check_prefect_api([work_pool, *([train_pool] if train_pool else [])], train_pool=train_pool)
    root = project_root()
    names = []
    for path in recipes:
        recipe = load_recipe(path, overrides or [])
        rel = os.path.relpath(Path(path).resolve(), root)
        train_deployment = None
        if train_pool:
            trainer: Flow = Flow.from_source(
                source=str(root), entrypoint="flows/train_stage.py:train_stage"
            )
            # to_deployment + apply, not deploy(): deploy() prints a table to stdout, where
            # the command promises one deployment name per line
            trainer.to_deployment(
                name=recipe.use_case,
                work_pool_name=train_pool,
                description=f"Training stage of {recipe.use_case} (GPU pool)",
                tags=["feinschliff", recipe.use_case, "train"],
                concurrency_limit=ONE_AT_A_TIME,
            ).apply()
            train_deployment = f"train-stage/{recipe.use_case}"
            names.append(train_deployment)
        flow: Flow = Flow.from_source(source=str(root), entrypoint="flows/retrain.py:retrain")
        was_paused, schedule_on = _current_state(f"retrain/{recipe.use_case}")
        # the update replaces the schedules: an empty list clears a cron the recipe dropped
        schedules = []
        if recipe.schedule is not None:
            schedules.append(
                Cron(
                    recipe.schedule.cron,
                    timezone=recipe.schedule.timezone,
                    active=schedule_on if paused is None else True,  # --paused: see paused
                )
            )
        flow.to_deployment(
            name=recipe.use_case,
            work_pool_name=work_pool,
            schedules=schedules,
            paused=was_paused if paused is None else paused,
            parameters={
                "recipe_path": rel,
                "overrides": list(overrides or []),
                "train_deployment": train_deployment,
            },
            description=recipe.description or f"Retrain {recipe.use_case}",
            tags=["feinschliff", recipe.use_case, recipe.train.method],
            # no deployment concurrency limit: see ONE_AT_A_TIME
        ).apply()
        names.insert(len(names) - (1 if train_pool else 0), f"retrain/{recipe.use_case}")
    return names


def check_prefect_api(pools: list[str], train_pool: str | None = None) -> None:
    """Before any deployment changes: the API is configured (PREFECT_API_URL, environment or
    Prefect profile; without it Prefect would start a throwaway server and the deployments
    would vanish with it), answers, and has every work pool in ``pools``. ``train_pool``
    (one of them): the GPU pool, whose missing-pool hint points to the GPU pool templates."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise PrefectSetupError(
            "PREFECT_API_URL is not set: deployments must live on a running Prefect server (a "
            "temporary one would take them along when this command ends). `make ui` starts a "
            "local server with a worker and syncs every recipe; otherwise export "
            "PREFECT_API_URL=http://HOST:PORT/api (`make ui`'s is http://127.0.0.1:4200/api)",
            code=2,
        )
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
        if problem is not None:
            raise PrefectSetupError(
                f"cannot reach the Prefect API at {url}: {problem or type(problem).__name__} "
                "(is the server running? `make ui` starts one)"
            )
        for pool in dict.fromkeys(pools):
            try:
                client.read_work_pool(pool)
            except ObjectNotFound:
                if pool == train_pool:  # a GPU pool: kubernetes/docker with a base job template
                    how = (
                        f"a GPU pool with a base job template from configs/prefect/README.md, "
                        f"e.g. `prefect work-pool create {pool} --type kubernetes "
                        "--base-job-template configs/prefect/kubernetes-gpu.json`"
                    )
                else:
                    how = f"`prefect work-pool create {pool} --type process`"
                hint = " (`make ui` creates it and starts its worker)" if pool == "local" else ""
                raise PrefectSetupError(
                    f"no work pool '{pool}' on the Prefect server at {url}: create it as "
                    f"{how}{hint}",
                    code=2,
                ) from None


def _current_state(name: str) -> tuple[bool, bool]:
    """(paused, schedule active) of the deployment ``name``; (False, True) when there is none.
    Someone may have switched it off in the UI, the whole deployment or its schedule's own
    toggle: a re-sync (which replaces the schedules) must not start it again."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            return False, True
    schedules = deployment.schedules or []
    return bool(deployment.paused), not schedules or any(s.active for s in schedules)
