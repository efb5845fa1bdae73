"""`run`'s temporary Prefect API server: out of the terminal's reach, gone with `run`.

Without ``PREFECT_API_URL`` Prefect starts a temporary API server (uvicorn) as a child process
the first time the flow needs its API. Prefect starts it in our process group, so a terminal's
Ctrl-C killed it together with `run`, whose flow then retried its crash report against the dead
server for two minutes and ended in httpx tracebacks; and a `run` killed with SIGKILL (the OOM
killer) left it running for good (~200 MB each). Here Prefect starts it as before (when needed,
on a free port, waiting for its health check, stopped at exit), but in its own session, so
Ctrl-C reaches `run` alone, which reports the crash and exits; and a watchdog thread inside the
server ends it once `run` is gone, however it died.

Imported by `run` only, next to the flow (and with it Prefect): the library itself never
imports Prefect. It hooks into prefect 3.x internals (``SubprocessASGIServer._instances`` and
``_run_uvicorn_command``): tests/integration/test_run_interrupt.py fails if they change.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# The server's entry point: ``python -c WATCHDOG PARENT_PID UVICORN_ARGS...``. It polls its
# parent (a SIGKILLed parent closes nothing the server would notice) rather than using
# prctl(PR_SET_PDEATHSIG), which fires when the *thread* that started it ends.
WATCHDOG = """
import os, runpy, signal, sys, threading, time
parent = int(sys.argv[1])
def watch():
    while os.getppid() == parent:
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down cleanly
    time.sleep(10)
    os._exit(1)  # it did not
threading.Thread(target=watch, daemon=True).start()
sys.argv = ["uvicorn", *sys.argv[2:]]
runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
"""


@contextmanager
def detached_temporary_server() -> Iterator[None]:
    """While inside, a temporary server Prefect starts is detached and watched (see above).
    Nothing starts here: with ``PREFECT_API_URL`` set (a real server, a test harness) Prefect
    never asks for one. A started server stays until exit, as Prefect's own does: Prefect
    sends its last log lines at exit, and a server stopped before retried them for a minute."""
    from prefect.server.api.server import SubprocessASGIServer

    if None in SubprocessASGIServer._instances:  # Prefect made its own already: leave it
        yield
        return
    server = _detached_class()()  # registered as the temporary server Prefect will start
    try:
        yield
    finally:
        if not server.running and SubprocessASGIServer._instances.get(None) is server:
            del SubprocessASGIServer._instances[None]  # never needed: Prefect's own next time


def _detached_class() -> Any:
    from prefect.server.api.server import SubprocessASGIServer

    class DetachedServer(SubprocessASGIServer):
        """Prefect's temporary server, started in its own session under a watchdog."""

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            return subprocess.Popen(
                [sys.executable, "-c", WATCHDOG, str(os.getpid()), *uvicorn_args(self.port)],
                env=server_env(),
                start_new_session=True,  # the terminal's SIGINT goes to the foreground group
            )

        def stop(self) -> None:
            # Prefect waits up to 5 s for uvicorn's shutdown: an interrupted `run` then hung.
            # Not waited for: the server ends itself once this process is gone (WATCHDOG).
            if self.server_process is not None:
                self.server_process.terminate()
                self.server_process = None
            super().stop()

    return DetachedServer


def uvicorn_args(port: int | None) -> list[str]:
    """The arguments Prefect's own ``SubprocessASGIServer`` gives uvicorn (prefect 3.x)."""
    import prefect

    return [
        "--app-dir",
        str(prefect.__module_path__.parent),
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]


def server_env() -> dict[str, str]:
    """The environment Prefect gives its temporary server: no UI, ephemeral mode, and the
    settings in effect here (a profile's database, a test's temporary settings)."""
    from prefect.settings import get_current_settings

    return {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
    }
