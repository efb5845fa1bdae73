"""Fault injection for the reliability suite (a test hook, inert unless the variable is set).

``FEINSCHLIFF_FAULT_AT=<point>`` makes the retrain flow SIGKILL its own process when it reaches
``<point>`` (no cleanup, no ``finally``, no Prefect state change: what a crashed worker or an
OOM kill leaves behind). ``<point>:raise-once`` raises :class:`InjectedFault` the first time
the point is reached in this process instead (a transient error that a task retry gets past).
Points are the retrain flow's task boundaries and the steps inside registration:
"""

from __future__ import annotations

import os
import signal

ENV = "FEINSCHLIFF_FAULT_AT"
POINTS = (
    "after-ingest",
    "after-train",
    "after-evaluate",
    "after-gate",
    "register:after-version",  # version written, production alias not moved yet
    # alias moved (with register.vllm: the pinned version loaded), the stable name not switched
    "register:after-alias-before-vllm",
    "register:after-promote",  # alias moved (and vLLM loaded), not yet recorded as done
    "after-register",
    "before-notify",
    "after-notify",  # notification sent, run not closed yet
)
_raised: set[str] = set()


class InjectedFault(RuntimeError):
    """The transient error ``<point>:raise-once`` injects."""


def fault_point(point: str) -> None:
    """Crash here if the test hook names this point; nothing otherwise."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    if wanted == point:
        os.kill(os.getpid(), signal.SIGKILL)
    if wanted == f"{point}:raise-once" and point not in _raised:
        _raised.add(point)
        raise InjectedFault(f"injected fault at {point}")
