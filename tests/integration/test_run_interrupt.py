"""`feinschliff run` without PREFECT_API_URL, against the real temporary Prefect server:
Ctrl-C (SIGINT to the whole foreground process group, as a terminal sends it) exits 130 at
once with one line and no server left; a SIGKILL of `run` (the OOM killer) leaves no server.

Prefect started its server in `run`'s process group: Ctrl-C killed it too, the flow retried its
crash report against it for two minutes and ended in httpx tracebacks (exit 1); a killed `run`
left the server running for good. The flow is a stub that sleeps (a Prefect flow all the same,
so Prefect starts its server as it does for the real one)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")

pytestmark = pytest.mark.integration

# `feinschliff run RECIPE` whose flow says "started" and sleeps; argv: recipe, base model, workdir
RUN = """
import faulthandler, signal, sys, time, types
from pathlib import Path
from prefect import flow
from feinschliff.cli import main
from tests.unit.adapter_factory import make_base

@flow(name="retrain-stub")
def retrain(recipe_path: str, overrides: list, workdir: str | None = None) -> dict:
    print("started", flush=True)
    time.sleep(300)

sys.modules["flows.retrain"] = types.SimpleNamespace(retrain=retrain)
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test's diagnosis on a hang
recipe, base, work = sys.argv[1:]
base = make_base(Path(base))
sys.argv = ["feinschliff", "run", recipe, "--workdir", work, "--set", f"base_model.name={base}"]
main()
"""


@pytest.fixture
def running_run(tmp_path):
    """The `run` process (its own process group, as a terminal's foreground job) once its flow
    runs, and its temporary server's pid."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        FEINSCHLIFF_HOME=str(tmp_path / "home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PYTHONUNBUFFERED="1",
    )
    args = [sys.executable, "-c", RUN, DEMO, str(tmp_path / "base"), str(tmp_path / "run")]
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "stderr", "wb"),  # noqa: SIM115 - the child writes it
        start_new_session=True,
        # a terminal's foreground job takes Ctrl-C: a test runner started in the background of
        # a non-interactive shell (`.ci/run &`) ignores SIGINT, and its children inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    servers: list[int] = []
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"started", (tmp_path / "stderr").read_text()
        servers.extend(p for p in _children(proc.pid) if b"uvicorn" in _cmdline(p))
        assert servers, "no temporary Prefect server among the children of `run`"
        yield proc, servers[0], tmp_path / "stderr"
    finally:
        for pid in [proc.pid, *servers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


def test_ctrl_c_exits_130_at_once_with_one_line_and_no_server_left(running_run):
    proc, server, stderr = running_run
    time.sleep(1)  # a person presses Ctrl-C while the run works, not as its flow begins
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        code = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:  # say where it hung
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(2)
        pytest.fail(f"`run` still running 90 s after Ctrl-C:\n{stderr.read_text()[-6000:]}")
    assert code == 130
    assert time.monotonic() - started < 30
    said = stderr.read_text()
    assert said.rstrip().endswith("interrupted: rerun the same command to resume"), said[-2000:]
    assert "Traceback" not in said and "Error logging to API" not in said, said[-2000:]
    assert _gone(server, within=15)


def test_sigterm_exits_143_with_one_line_and_no_server_left(running_run):
    """`docker stop` / Kubernetes send SIGTERM to the process alone (not its group): Prefect
    marks the flow run crashed, then the run ends as for Ctrl-C, with SIGTERM's exit code."""
    proc, server, stderr = running_run
    time.sleep(1)
    os.kill(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(2)
        pytest.fail(f"`run` still running 90 s after SIGTERM:\n{stderr.read_text()[-6000:]}")
    said = stderr.read_text()
    assert code == 143, said[-2000:]
    assert said.rstrip().endswith("terminated (SIGTERM): rerun the same command to resume"), said[
        -2000:
    ]
    assert "Traceback" not in said, said[-2000:]
    assert _gone(server, within=15)


def test_a_killed_run_leaves_no_server(running_run):
    proc, server, _ = running_run
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _gone(server, within=15), "the temporary Prefect server outlived its `run`"


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _gone(pid: int, within: float) -> bool:
    """Whether ``pid`` exits (or is a zombie no one reaps) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.2)
    return False
