"""`feinschliff deployments sync`: one Prefect deployment per recipe."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from feinschliff.cli.app import Failure, SetOpt, app

deployments_app = typer.Typer(
    help="Prefect deployments for scheduled and UI-triggered runs.", no_args_is_help=True
)
app.add_typer(deployments_app, name="deployments")


@deployments_app.command("sync")
def sync(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe YAML files.", show_default=False)],
    pool: Annotated[
        str,
        typer.Option(
            help="Work pool the retrain deployments run on (must exist on the server, else "
            "exit 2; `make ui` creates 'local')."
        ),
    ] = "local",
    paused: Annotated[
        bool | None,
        typer.Option(
            "--paused/--active",
            help="--paused: pause the retrain deployments (no scheduled runs); --active: "
            "activate them and switch their schedule on. Without either, a new deployment is "
            "active and an existing one keeps its state (one paused in the UI, or whose "
            "schedule was switched off there, stays so).",
            show_default=False,
        ),
    ] = None,
    train_pool: Annotated[
        str | None,
        typer.Option(
            help="Run training on this (GPU) work pool via a `train-stage/<use_case>` "
            "deployment; the other stages stay on --pool. Both pools must see the stage "
            "outputs at the same path (shared FEINSCHLIFF_HOME)."
        ),
    ] = None,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="After the sync, delete the `retrain/*` and `train-stage/*` deployments whose "
            "use case none of RECIPES has (a recipe deleted or renamed), with their schedules, "
            "and without --train-pool every `train-stage/*` one; prints 'deleted NAME' for "
            "each. Deployments of other flows stay.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="With --prune: change nothing (no sync either), print 'would delete NAME' "
            "for each deployment --prune would delete.",
        ),
    ] = False,
    set_: SetOpt = None,
) -> None:
    """Create or update a Prefect deployment `retrain/<use_case>` per recipe, scheduled by the
    recipe's `schedule` (cron + timezone; none: runs only when triggered, and a schedule the
    recipe dropped is cleared), against the Prefect API in PREFECT_API_URL. The deployments
    run flows/retrain.py from this checkout with the recipe path relative to it; prints one
    deployment name per line. Every recipe is validated before anything changes (exit 2).
    Idempotent: rerunning updates the deployments in place. --set overrides apply to every
    recipe given and become the deployments' default `overrides` parameter (a run triggered
    with its own `overrides` replaces them). Nothing is deleted without --prune."""
    from feinschliff.paths import project_root
    from feinschliff.recipe_loader import RecipeError, load_recipe

    if dry_run and not prune:  # a --dry-run that synced anyway would be worse than none
        raise Failure(
            "--dry-run previews what --prune would delete: add --prune (a sync without "
            "it deletes nothing)",
            code=2,
        )
    errors = []  # every recipe valid before any deployment changes
    first: dict[str, Path] = {}  # use case -> the recipe that has it
    for recipe in recipes:
        try:
            use_case = load_recipe(recipe, set_ or []).use_case
        except RecipeError as exc:
            errors += exc.lines
            continue
        if use_case in first:  # one deployment per use case: the later would replace the first
            errors.append(
                f"{recipe}: use_case {use_case!r} is also {first[use_case]}'s; one deployment, "
                "registry and run folder per use case: give each recipe its own use_case"
            )
        first.setdefault(use_case, recipe)
    use_cases = set(first)
    if errors:
        raise Failure("\n".join(errors), code=2)
    sys.path.insert(0, str(project_root()))
    import httpx

    from flows.deployments import (
        PrefectSetupError,
        check_prefect_api,
        delete_deployment,
        stale_deployments,
        sync_deployments,
    )

    try:
        if dry_run:  # the same checks as a sync, which it skips
            check_prefect_api([pool, *([train_pool] if train_pool else [])], train_pool)
        else:
            for name in sync_deployments(
                recipes, pool, paused=paused, train_pool=train_pool, overrides=set_ or []
            ):
                typer.echo(name)
        if prune:  # only after every recipe synced: a sync that failed half-way prunes nothing
            trained = use_cases if train_pool else set()
            for name, deployment_id in stale_deployments(use_cases, trained).items():
                if not dry_run:
                    delete_deployment(deployment_id)
                typer.echo(f"would delete {name}" if dry_run else f"deleted {name}")
    except PrefectSetupError as exc:
        raise Failure(str(exc), code=exc.code) from exc
    except httpx.TransportError as exc:  # the server went away after the check
        raise Failure(f"lost the Prefect API while syncing: {exc}") from exc
