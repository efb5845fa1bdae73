"""The ``feinschliff`` command line: every stage on its own, plus the whole loop.

Exit codes: 0 success (``gate``/``run``: promoted), 2 invalid recipe or arguments,
3 gate rejected, 1 any other failure. Commands live in one module per area; importing them
registers them on the shared Typer app.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import typer

from feinschliff.artifacts import OutputInUse
from feinschliff.cli import (  # noqa: F401  (importing registers the commands)
    deploy_cmd,
    estimate_cmd,
    evaluate_cmd,
    gc_cmd,
    generate_cmd,
    history_cmd,
    ingest_cmd,
    init_cmd,
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
TERMINATED = "terminated (SIGTERM): rerun the same command to resume"


class Terminated(KeyboardInterrupt):
    """SIGTERM (`docker stop`, Kubernetes): unwinds like Ctrl-C, so cleanup runs (a version
    pinned on a vLLM server is unloaded, locks are released) instead of dying mid-step."""


_main_pid = 0  # the process main() runs in (forked workers inherit the handler)


def main() -> None:
    global _main_pid
    _setup_logging()
    _check_home()
    if threading.current_thread() is not threading.main_thread():
        _main()  # signal handlers can only be set from the main thread
        return
    _main_pid = os.getpid()
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        _main()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    if os.getpid() != _main_pid:  # a forked worker: end as it did before
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated


def _main() -> None:
    try:
        app()
    except SystemExit as exc:
        if cause := _interruption(exc):  # Typer turns Ctrl-C into exit 130, silently
            _exit_interrupted(cause)
        raise
    except KeyboardInterrupt as exc:  # outside Typer's handling (e.g. during an exception's exit)
        _exit_interrupted(exc)
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


def _exit_interrupted(cause: KeyboardInterrupt) -> None:
    """One line and the shell's codes: 130 for Ctrl-C, 143 for SIGTERM."""
    terminated = isinstance(cause, Terminated)
    typer.echo(TERMINATED if terminated else INTERRUPTED, err=True)
    sys.exit(143 if terminated else 130)


def _interruption(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt that caused ``exc`` (Typer raises SystemExit from its Exit)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
