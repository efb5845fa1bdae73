"""Create or update one Prefect deployment per recipe (`feinschliff deployments sync`).

Each deployment runs ``flows/retrain.py:retrain`` from this checkout on a work pool, with the
recipe path as its parameter and the recipe's ``schedule`` (cron + timezone) as its schedule.
Re-running the sync updates deployments in place (same name), so it is idempotent: it
replaces the schedule (a recipe without ``schedule`` clears it) and keeps a deployment paused
or its schedule switched off in the UI unless told otherwise (``--active``). It deletes nothing:
``sync --prune`` deletes the ``stale_deployments``, those of use cases no recipe given has.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from uuid import UUID

from prefect import Flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron

from feinschliff.paths import project_root
from feinschliff.recipe_loader import load_recipe


class PrefectSetupError(Exception):
    """The Prefect API is not set, not reachable, lacks a work pool, or holds a deployment a
    sync cannot update: nothing was deployed. ``code`` follows the CLI's exit codes (2: fix the
    setup or arguments, 1: other failure)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# One training per use case at a time (train-stage runs share checkpoints): a second waits in
# the queue. Not for `retrain`: the server frees a deployment slot when a run pauses for
# approval and the paused run then crashes; retrain queues on a global concurrency limit
# of its own instead (flows/retrain.py: _one_run_per_use_case).
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)

# The flows a sync deploys (Prefect flow name: entrypoint). Pruning deletes only deployments of
# these flows from these entrypoints: another project's flow that is also named `retrain` stays.
SYNCED_FLOWS = {
    "retrain": "flows/retrain.py:retrain",
    "train-stage": "flows/train_stage.py:train_stage",
}


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
    loaded = [load_recipe(path, overrides or []) for path in recipes]
    # every current state first: a deployment the sync cannot update stops it unchanged
    states = [_current_state(f"retrain/{recipe.use_case}") for recipe in loaded]
    names = []
    for path, recipe, (was_paused, schedule_on) in zip(recipes, loaded, states, strict=True):
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


def stale_deployments(use_cases: set[str], trained: set[str] | None = None) -> dict[str, UUID]:
    """The `retrain/*` deployments (of ``SYNCED_FLOWS``) whose use case is not in
    ``use_cases``, and the `train-stage/*` ones whose use case is not in ``trained`` (default
    ``use_cases``; a sync without ``--train-pool`` trains in the retrain flow, so an earlier
    sync's training deployment is left over): name -> id, sorted by name (what ``sync --prune``
    deletes)."""
    from prefect.client.orchestration import get_client

    wanted = {"train-stage": use_cases if trained is None else trained}
    with get_client(sync_client=True) as client:
        stale = {
            f"{flow}/{d.name}": d.id
            for flow, entrypoint in SYNCED_FLOWS.items()
            for d in _deployments_of(client, flow)
            if d.entrypoint == entrypoint and d.name not in wanted.get(flow, use_cases)
        }
    return dict(sorted(stale.items()))


def delete_deployment(deployment_id: UUID) -> None:
    """Prefect deletes the deployment's scheduled runs with it; a run in progress goes on."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):
        client.delete_deployment(deployment_id)  # not found: deleted meanwhile, also gone


def _deployments_of(client, flow_name: str) -> list:
    """Every deployment of the flow ``flow_name``, page by page (the API returns at most
    ``PREFECT_SERVER_API_DEFAULT_LIMIT`` per request)."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    only = FlowFilter(name=FlowFilterName(any_=[flow_name]))
    found: list = []
    while page := client.read_deployments(flow_filter=only, offset=len(found)):
        found += page
    return found


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
    if schedules and all(s.slug for s in schedules):
        # Prefect then updates schedules only by slug (HTTP 422 for a request without) and
        # would keep a cron the recipe dropped: the sync's schedules carry no slug
        raise PrefectSetupError(
            f"deployment {name} has schedules with a `slug` (e.g. from a prefect.yaml "
            "`schedules: - slug: ...`), which `deployments sync` cannot replace: clear them "
            f"with `prefect deployment schedule clear {name}` and sync again (the recipe's "
            "`schedule` is the one to keep); nothing was changed",
            code=2,
        )
    return bool(deployment.paused), not schedules or any(s.active for s in schedules)
