"""The feinschliff CLI in-process, as `feinschliff ...` would exit: main()'s mapping of a
Failure to its exit code and message, other exceptions raised."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`feinschliff ARGS` in-process through main(), which maps library errors to exit codes
    (``run_cli`` calls the Typer app, below that mapping); returns (exit code, stderr)."""
    import sys

    import pytest

    from feinschliff.cli import main

    monkeypatch.setattr(sys, "argv", ["feinschliff", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().err


@contextmanager
def lock_held_elsewhere(folder: Path, name: str) -> Iterator[subprocess.Popen]:
    """Another process holding ``folder/name`` (``pipeline.run_lock``), as a running stage
    holds its output's lock; killed on exit."""
    code = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from feinschliff.pipeline import run_lock
        with run_lock(Path({str(folder)!r}), name={name!r}):
            print("held", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()
