"""A fork server for kill -9 trials: one interpreter imports torch/transformers/Prefect once
(~10 s on 2 cores), then forks a fresh child per run. Each child is a real OS process running
the real code (the CLI, the Prefect flow) and is killed with a real SIGKILL; only the import
time is shared, which keeps a trial at a few seconds instead of ~25.

The server runs with the environment the test gives it (Prefect's API URL and result storage
are read at import), so each test module starts its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_SERVER = r"""
import importlib, json, os, signal, sys, traceback
sys.path.insert(0, os.getcwd())
for name in sys.argv[1:]:
    importlib.import_module(name)
# Freeze the code version (part of every stage key) to the code imported here, which is the
# code the children run: other people editing the checkout mid-test must not make a rerun
# discard its checkpoints as "made by other code".
from feinschliff.artifacts import code_version
code_version()
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps children: no zombies
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        rc = 1
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ.update(req["env"])
            module, func = req["call"].split(":")
            rc = getattr(importlib.import_module(module), func)(*req["args"]) or 0
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            with open(req["log"] + ".rc", "w") as f:
                f.write(str(rc))
            os._exit(rc)
    print(json.dumps({"pid": pid}), flush=True)
"""


class Child:
    """One forked run: its pid, log, and exit code (None while running or when killed)."""

    def __init__(self, pid: int, log: Path):
        self.pid, self.log = pid, log

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL and wait until the process is gone (nothing it does after counts)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        while self.alive():
            time.sleep(0.005)

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"run {self.pid} still going after {timeout} s: {self.tail()}")
            time.sleep(0.05)
        return self.returncode

    @property
    def returncode(self) -> int | None:
        rc = Path(str(self.log) + ".rc")
        return int(rc.read_text()) if rc.exists() else None

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


class Zygote:
    def __init__(self, preload: list[str], env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, *preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError(f"fork server failed to start (exit {self.proc.wait()})")

    def start(self, call: str, args: list, log: Path, env: dict[str, str] | None = None) -> Child:
        """Fork a child that runs ``module:function(*args)`` with stdout/stderr in ``log``."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        Path(str(log) + ".rc").unlink(missing_ok=True)
        req = {"call": call, "args": args, "log": str(log), "env": env or {}}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return Child(json.loads(self.proc.stdout.readline())["pid"], log)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def run_cli(argv: list[str]) -> int:
    """What `feinschliff ARGV...` does, in a forked child."""
    from feinschliff.cli import main

    sys.argv = ["feinschliff", *argv]
    main()
    return 0


def run_flow(kwargs: dict, result_path: str) -> int:
    """The retrain flow, in a forked child; its return value goes to ``result_path``."""
    from flows.retrain import retrain

    result = retrain(**kwargs)
    Path(result_path).write_text(json.dumps(result, default=str))
    return 0
