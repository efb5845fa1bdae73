"""The reliability suite: each test is one row of the table `make reliability` prints
(test, trials, passed, figure). Tests report their numbers with the `reliability` fixture."""

from __future__ import annotations

import os

import pytest

ROWS: list[tuple[str, int, str, str]] = []

# `make reliability` sets FEINSCHLIFF_RELIABILITY_LONG=1 for more trials; `make test` runs the short mode.
LONG = os.environ.get("FEINSCHLIFF_RELIABILITY_LONG") == "1"


def trials(short: int, long: int) -> int:
    return long if LONG else short


def pytest_collection_modifyitems(config, items):
    """Rows marked `long` run only in long mode; in `make test` they are deselected (reported
    as such), never skipped-and-counted."""
    if LONG:
        return
    drop = [item for item in items if item.get_closest_marker("long")]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [item for item in items if item not in drop]


@pytest.fixture()
def reliability(request):
    """Call ``reliability(trials=N, figure="...")`` once the test's measurement is done."""

    def record(*, trials: int, figure: str) -> None:
        request.node.reliability_info = {"trials": trials, "figure": figure}

    return record


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # The row travels in the report's user_properties, so it reaches the controller under xdist.
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        report.user_properties.append(("reliability", getattr(item, "reliability_info", {})))


def pytest_runtest_logreport(report):
    if report.when != "call":
        return
    for key, info in report.user_properties:
        if key == "reliability":
            name = report.nodeid.split("::")[-1]
            status = "PASS" if report.passed else "FAIL"
            ROWS.append((name, info.get("trials", 0), status, info.get("figure", "-")))


def pytest_terminal_summary(terminalreporter):
    if not ROWS:
        return
    tr = terminalreporter
    tr.section("reliability")
    width = max(len(r[0]) for r in ROWS)
    tr.write_line(f"{'test':<{width}}  {'trials':>6}  {'passed':<6}  figure")
    for name, n, ok, figure in ROWS:
        tr.write_line(f"{name:<{width}}  {n:>6}  {ok:<6}  {figure}")
