"""The feinschliff CLI in-process, as `feinschliff ...` would exit: main()'s mapping of a
Failure to its exit code and message, other exceptions raised."""

from __future__ import annotations

from typer.testing import CliRunner


def run_cli(*args: str) -> tuple[int, str]:
    from feinschliff.cli import app
    from feinschliff.cli.app import Failure

    res = CliRunner().invoke(app, list(args))
    if isinstance(res.exception, Failure):
        return res.exception.code, res.output + str(res.exception)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output
