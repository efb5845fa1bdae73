"""The ``feinschliff`` command line: every stage on its own, plus the whole loop.

Exit codes: 0 success (``gate``/``run``: promoted), 2 invalid recipe or arguments,
3 gate rejected, 1 any other failure. Commands live in one module per area; importing them
registers them on the shared Typer app.
"""

from __future__ import annotations

import sys

import typer

from feinschliff.artifacts import OutputInUse
from feinschliff.cli import (  # noqa: F401  (importing registers the commands)
    deploy_cmd,
    estimate_cmd,
    evaluate_cmd,
    generate_cmd,
    ingest_cmd,
    models_cmd,
    registry_cmd,
    serve_cmd,
    stages,
    train_cmd,
    validate_cmd,
)
from feinschliff.cli.app import Failure, _check_home, _setup_logging, app
from feinschliff.models import ModelFetchError, UnknownModel
from feinschliff.paths import ProjectRootMissing
from feinschliff.registry_store import NotAFolder

__all__ = ["app", "main"]


def main() -> None:
    _setup_logging()
    _check_home()
    try:
        app()
    except Failure as exc:
        typer.echo(f"error: {exc}" if exc.code != 2 else str(exc), err=True)
        sys.exit(exc.code)
    except (OutputInUse, ProjectRootMissing, NotAFolder) as exc:  # wrong paths, any command
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except ModelFetchError as exc:  # any stage may provision the base model on first use
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2 if isinstance(exc, UnknownModel) else 1)
