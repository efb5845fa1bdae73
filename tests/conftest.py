"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) with one BLAS thread; the Makefile sets
both, and this file sets them again for a bare `pytest` call."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

pytest_plugins = ["tests.fixtures"]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def _log_handlers_on_open_streams():
    """A log handler created while a test had swapped stderr (Typer's CliRunner, which closes
    its stream) keeps writing there: a later test's stderr then holds "--- Logging error ---"
    (Prefect's console handler, set up during a `deployments sync` test). Point such handlers
    back at the real stderr after each test."""
    import logging
    import sys

    yield
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and getattr(
                handler.stream, "closed", False
            ):
                handler.stream = sys.__stderr__  # not setStream: it flushes the closed one
                if hasattr(handler, "console"):  # rich's Console keeps its own reference
                    handler.console.file = sys.__stderr__


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A private FEINSCHLIFF_HOME (registry, runs) that still sees the shared model cache and
    the tool venvs (vLLM, Axolotl: GBs, installed once)."""
    from feinschliff.models import feinschliff_home

    shared = feinschliff_home()
    h = tmp_path / "home"
    h.mkdir()
    for name in ("models", "venvs"):
        if (shared / name).exists():
            (h / name).symlink_to(shared / name, target_is_directory=True)
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(h))
    return h


def _service_group(item) -> str:
    names = set(getattr(item, "fixturenames", ()))
    if "vllm_server" in names:
        return "vllm"
    if "prefect_harness" in names:
        return "prefect"
    return item.nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under `pytest -n N --dist loadgroup`, keep each expensive session service on one worker:
    every test that needs the real vLLM runs on the same worker (one server), likewise Prefect's
    harness; other tests stay together per file (module fixtures run once).

    tryfirst: the marks must be in place before xdist's worker turns them into ``@group``
    nodeid suffixes in its own modifyitems hook."""
    if not config.pluginmanager.hasplugin("xdist"):  # -p no:xdist: no such marker registered
        return
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_service_group(item)))


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown under -p no:xdist
def pytest_xdist_node_collection_finished(node, ids):
    """On the controller: fail at once if a worker's test ids carry no ``@group`` suffix, i.e.
    xdist ignored the groups (pytest 9.2 with xdist 3.8: pytest-xdist#1386). Each worker would
    start its own vLLM and the 2-core/24 GiB CI machine runs out of memory."""
    if node.config.getoption("dist") == "loadgroup":
        lost = [i for i in ids if "@" not in i.rsplit("::", 1)[-1]]
        if lost:
            raise pytest.UsageError(
                f"--dist loadgroup: xdist dropped the groups of {len(lost)} tests "
                f"(e.g. {lost[0]}); see pytest-xdist#1386 and the pytest pin in pyproject.toml"
            )
