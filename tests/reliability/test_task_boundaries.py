"""Row "kill at every Prefect task boundary": the retrain flow SIGKILLs itself at one boundary
(test hook ``FEINSCHLIFF_FAULT_AT``, flows/faults.py), then runs again without the hook. Pass:
the rerun completes, and over both runs each side effect happened exactly once: one registry
version, one `register` and one production `alias` audit entry, one `gate` audit entry, one
webhook notification (the local receiver of the `webhook` fixture), thanks to the run's
idempotency ledger (feinschliff.ledger).

vLLM loads are not part of this row: the demo recipe registers without ``register.vllm`` (a
flow run against the session's real vLLM would add ~5 min of install/start here); promotion
recovery there goes through ``deploy.reconcile``, which loads nothing already loaded.

Both runs of a boundary share the stage cache (Prefect result storage + one workdir), so only
the first boundary trains and evaluates; the others replay cached stages in seconds. Each run
is a child forked from one pre-imported interpreter (tests/reliability/zygote.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from feinschliff.ledger import Ledger
from feinschliff.registry import audit_log, read_aliases, versions
from flows.faults import POINTS
from tests.reliability.conftest import LONG
from tests.reliability.zygote import Zygote

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
USE_CASE = "support-de-demo"
PROMOTE = [
    "train.hyperparameters.max_steps=2",
    "train.hyperparameters.save_steps=1",
    "train.hyperparameters.max_length=128",
    "evaluate.tasks=[de_wissen_mc]",
    "evaluate.limit=4",
    "evaluate.heldout=false",
    "gate.rules.0.tolerance=1.0",  # the gate passes: every side effect runs
    "gate.rules.1.threshold=4",
]
# CI: one boundary per side effect (and the first, which pays for training and evaluation).
SHORT = ("after-train", "register:after-version", "register:after-promote", "after-notify")


@pytest.fixture(scope="module")
def flow_env(prefect_harness, demo_model, tmp_path_factory):
    """A fork server whose children talk to the session's Prefect API and share result storage
    and a FEINSCHLIFF_HOME (with the shared model cache)."""
    from prefect.settings import PREFECT_API_URL

    from feinschliff.models import feinschliff_home

    base = tmp_path_factory.mktemp("boundaries")
    home = base / "home"
    home.mkdir()
    (home / "models").symlink_to(feinschliff_home() / "models", target_is_directory=True)
    env = {
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_HOME": str(base / "prefect"),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(base / "storage"),
        "FEINSCHLIFF_HOME": str(home),
    }
    z = Zygote(["flows.retrain"], env)
    yield z, base
    z.close()


def _count(root: Path, ledger: Ledger, got: list[dict]) -> dict[str, int]:
    events = audit_log(root, USE_CASE)
    return {
        "versions": len(versions(root, USE_CASE)),
        "register": sum(e["event"] == "register" for e in events),
        "production moves": sum(
            e["event"] == "alias" and e["alias"] == "production" for e in events
        ),
        "gate records": sum(e["event"] == "gate" for e in events),
        "notifications": len(got),
    }


def test_kill_at_every_task_boundary_then_rerun_does_each_side_effect_once(
    flow_env, webhook, reliability
):
    zygote, base = flow_env
    url, received = webhook
    points = POINTS if LONG else SHORT
    workdir = base / "run"  # shared: the stage cache serves every boundary after the first
    ledger = Ledger(workdir / "ledger.jsonl")
    complete = once = 0
    problems = []
    for i, point in enumerate(points):
        registry = base / f"registry-{i}"
        kwargs = {
            "recipe_path": str(ROOT / "recipes" / "demo-de.yaml"),
            "overrides": [*PROMOTE, f"register.registry={registry}"],
            "workdir": str(workdir),
        }
        seen = len(received)
        env = {"FEINSCHLIFF_NOTIFY_URLS": url}
        log = base / f"{i}-killed.log"
        killed = zygote.start(
            "tests.reliability.zygote:run_flow",
            [kwargs, str(base / f"{i}-killed.json")],
            log,
            {**env, "FEINSCHLIFF_FAULT_AT": point},
        )
        rc = killed.wait(timeout=900)
        if rc is not None:
            problems.append(f"{point}: the run was not killed (exit {rc}): {killed.tail()}")
            continue
        rerun = zygote.start(
            "tests.reliability.zygote:run_flow",
            [kwargs, str(base / f"{i}-rerun.json")],
            base / f"{i}-rerun.log",
            env,
        )
        if rerun.wait(timeout=900) != 0:
            problems.append(f"{point}: rerun failed: {rerun.tail()}")
            continue
        result = json.loads((base / f"{i}-rerun.json").read_text())
        complete += result["promoted"] is True and result["version"] == "v0001"
        got = received[seen:]
        counts = _count(registry, ledger, got)
        production = read_aliases(registry, USE_CASE).get("production")
        titles = [g["title"] for g in got]
        if set(counts.values()) == {1} and production == "v0001" and "promoted" in titles[0]:
            once += 1
        else:
            problems.append(f"{point}: {counts}, production {production}, notified {titles}")
        print(f"{point}: {counts}")

    n = len(points)
    reliability(
        trials=n,
        figure=f"{n} boundaries: {complete}/{n} reruns complete, side effects exactly once "
        f"{once}/{n} (registry + notifications; vLLM not in this flow config)",
    )
    assert not problems, "\n".join(problems)
    assert complete == once == n


def test_fault_hook_is_inert_without_the_variable():
    from flows.faults import ENV, fault_point

    assert ENV not in os.environ
    for point in POINTS:
        fault_point(point)  # would kill this process if the hook were armed
