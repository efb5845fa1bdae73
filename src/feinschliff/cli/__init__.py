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
from feinschliff.cli.app import Failure, _check_home, _setup_logging, app, os_error_line
from feinschliff.models import ModelFetchError, UnknownModel
from feinschliff.paths import ProjectRootMissing
from feinschliff.registry_store import NotAFolder

__all__ = ["app", "main"]


INTERRUPTED = "interrupted: rerun the same command to resume"


def main() -> None:
    _setup_logging()
    _check_home()
    try:
        app()
    except SystemExit as exc:
        if _interrupted(exc):  # Typer turns Ctrl-C into exit 130, silently
            typer.echo(INTERRUPTED, err=True)
        raise
    except KeyboardInterrupt:  # outside Typer's handling (e.g. during an exception's exit)
        typer.echo(INTERRUPTED, err=True)
        sys.exit(130)
    except Failure as exc:
        typer.echo(f"error: {exc}" if exc.code != 2 else str(exc), err=True)
        sys.exit(exc.code)
    except (OutputInUse, ProjectRootMissing, NotAFolder) as exc:  # wrong paths, any command
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except ModelFetchError as exc:  # any stage may provision the base model on first use
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2 if isinstance(exc, UnknownModel) else 1)
    except OSError as exc:  # a full disk, an unreadable file: its cause and path, not a wall
        typer.echo(f"error: {os_error_line(exc)}", err=True)
        sys.exit(1)


def _interrupted(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt caused ``exc`` (Typer raises SystemExit from its Exit)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
