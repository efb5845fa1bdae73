"""Row "kill at every Prefect task boundary": the retrain flow SIGKILLs itself at one boundary
(test hook ``FEINSCHLIFF_FAULT_AT``, flows/faults.py), then runs again without the hook. Pass:
the rerun completes, and over both runs each side effect happened exactly once: one registry
version, one `register` and one production `alias` audit entry, one `gate` audit entry, one
webhook notification (the local receiver of the `webhook` fixture), one promotion intent in
the run's idempotency ledger (feinschliff.ledger: a rerun recovers, it never promotes anew).

Row two repeats the kills at the registration boundaries with ``register.vllm`` pointing at the
session's real vLLM (through a counting proxy) and also counts vLLM loads per served name: the
test hook ``register:after-alias-before-vllm`` crashes between the alias move and the stable
name's switch, where promotion recovery goes through ``deploy.reconcile`` (which loads nothing
already loaded).

Both runs of a boundary share the stage cache (Prefect result storage + one workdir), so only
the first boundary trains and evaluates; the others replay cached stages in seconds. Each run
is a child forked from one pre-imported interpreter (tests/reliability/zygote.py).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from feinschliff.ledger import Ledger
from feinschliff.registry import audit_log, read_aliases, versions
from feinschliff.serving.deploy import is_managed
from feinschliff.serving.vllm_client import VllmClient, VllmError
from feinschliff.specs.register import VllmServer
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
# With vLLM (CI): before the alias moved, between the alias move and the stable name's switch,
# after both (not yet recorded as done), after the register task. Long mode: every boundary.
VLLM_SHORT = (
    "register:after-version",
    "register:after-alias-before-vllm",
    "register:after-promote",
    "after-register",
)


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


def _count(root: Path, got: list[dict], ledger: list[dict]) -> dict[str, int]:
    events = audit_log(root, USE_CASE)
    return {
        # the ledger's own view: one promotion attempted (a rerun recovers, never re-promotes)
        "promote intents": sum(
            r.get("state") == "intent" and r["what"].startswith("promote ") for r in ledger
        ),
        "versions": len(versions(root, USE_CASE)),
        "register": sum(e["event"] == "register" for e in events),
        "production moves": sum(
            e["event"] == "alias" and e["alias"] == "production" for e in events
        ),
        "gate records": sum(e["event"] == "gate" for e in events),
        "notifications": len(got),
    }


def _kill_then_rerun(zygote: Zygote, base: Path, tag: str, point: str, overrides: list[str], url):
    """One trial: a run killed at ``point``, then a rerun without the hook. Returns the rerun's
    result, or a problem (str) when the kill did not happen or the rerun failed."""
    kwargs = {
        "recipe_path": str(ROOT / "recipes" / "demo-de.yaml"),
        "overrides": [*PROMOTE, *overrides],
        "workdir": str(base / "run"),  # shared: the stage cache serves every run after the first
    }
    env = {"FEINSCHLIFF_NOTIFY_URLS": url}
    killed = zygote.start(
        "tests.reliability.zygote:run_flow",
        [kwargs, str(base / f"{tag}-killed.json")],
        base / f"{tag}-killed.log",
        {**env, "FEINSCHLIFF_FAULT_AT": point},
    )
    rc = killed.wait(timeout=900)
    if rc is not None:
        return f"{point}: the run was not killed (exit {rc}): {killed.tail()}"
    rerun = zygote.start(
        "tests.reliability.zygote:run_flow",
        [kwargs, str(base / f"{tag}-rerun.json")],
        base / f"{tag}-rerun.log",
        env,
    )
    if rerun.wait(timeout=900) != 0:
        return f"{point}: rerun failed: {rerun.tail()}"
    return json.loads((base / f"{tag}-rerun.json").read_text())


def _once(registry: Path, got: list[dict], ledger: list[dict]) -> tuple[dict[str, int], bool]:
    """Side-effect counts over both runs, and whether each is exactly one (production v0001)."""
    counts = _count(registry, got, ledger)
    production = read_aliases(registry, USE_CASE).get("production")
    titles = [g["title"] for g in got]
    ok = set(counts.values()) == {1} and production == "v0001" and "promoted" in titles[0]
    return counts | {"production": production, "notified": titles}, ok


def test_kill_at_every_task_boundary_then_rerun_does_each_side_effect_once(
    flow_env, webhook, reliability
):
    zygote, base = flow_env
    url, received = webhook
    points = POINTS if LONG else SHORT
    complete = once = 0
    problems = []
    for i, point in enumerate(points):
        registry = base / f"registry-{i}"
        seen, mark = len(received), len(_ledger(base).records())
        result = _kill_then_rerun(
            zygote, base, str(i), point, [f"register.registry={registry}"], url
        )
        if isinstance(result, str):
            problems.append(result)
            continue
        complete += result["promoted"] is True and result["version"] == "v0001"
        counts, ok = _once(registry, received[seen:], _ledger(base).records()[mark:])
        once += ok
        if not ok:
            problems.append(f"{point}: {counts}")
        print(f"{point}: {counts}")

    n = len(points)
    reliability(
        trials=n,
        figure=f"{n} boundaries: {complete}/{n} reruns complete, side effects exactly once "
        f"{once}/{n} (registry + notifications; vLLM loads: the vLLM row below)",
    )
    assert not problems, "\n".join(problems)
    assert complete == once == n


def test_kill_at_vllm_boundaries_then_rerun_loads_each_adapter_once(
    flow_env, webhook, vllm_server, reliability
):
    """The same trials with ``register.vllm`` pointing at the session vLLM (through a counting
    proxy, tests/reliability/test_vllm_reliability.py): after the rerun the stable name answers
    from this run's version, and every served name (pinned ``@v0001`` and the stable name) was
    loaded into vLLM exactly once over both runs; registry and notification counts as above."""
    from tests.reliability.test_vllm_reliability import FaultProxy

    zygote, base = flow_env
    url, received = webhook
    points = POINTS if LONG else VLLM_SHORT
    proxy = FaultProxy(vllm_server.url)
    complete = once = loaded_once = live = 0
    problems = []
    try:
        for i, point in enumerate(points):
            registry, serving = base / f"vllm-registry-{i}", base / f"vllm-serving-{i}"
            spec = {
                "servers": [{"url": proxy.url}],
                "model": vllm_server.model,
                "adapter_dir": str(serving),  # own path per trial: nothing is loaded already
                "verify_prompt": "Hallo",
            }
            sets = [f"register.registry={registry}", f"register.vllm={json.dumps(spec)}"]
            seen, sent = len(received), len(proxy.requests)
            mark = len(_ledger(base).records())
            result = _kill_then_rerun(zygote, base, f"vllm-{i}", point, sets, url)
            if isinstance(result, str):
                problems.append(result)
                continue
            complete += result["promoted"] is True and result["version"] == "v0001"
            records = _ledger(base).records()[mark:]
            counts, ok = _once(registry, received[seen:], records)
            if point == "register:after-alias-before-vllm":  # the recovery path ran
                ok = ok and any(r.get("recovered") for r in records)
            loads = dict(
                Counter(
                    body.get("lora_name")
                    for method, path, body in proxy.requests[sent:]
                    if method == "POST" and path == "/v1/load_lora_adapter"
                )
            )
            with VllmClient(VllmServer(url=vllm_server.url), timeout_s=300) as client:
                served = client.adapters()
                try:  # answered by the stable name (the client checks the answering model)
                    answered = isinstance(client.complete(USE_CASE, "Hallo", max_tokens=4), str)
                except VllmError as exc:
                    answered, served["error"] = False, str(exc)
            from_run = Path(served.get(USE_CASE, "")).parent == serving / USE_CASE
            loads_ok = loads == {USE_CASE: 1, f"{USE_CASE}@v0001": 1}
            live += answered and from_run
            loaded_once += loads_ok
            once += ok
            if not (ok and answered and from_run and loads_ok):
                problems.append(f"{point}: {counts}, loads {loads}, served {served}")
            print(f"vLLM {point}: {counts}, loads {loads}")
            _unload(vllm_server)  # next trial starts from a server without this use case
    finally:
        proxy.stop()
        _unload(vllm_server)

    n = len(points)
    reliability(
        trials=n,
        figure=f"{n} boundaries with register.vllm: {complete}/{n} reruns complete, "
        f"served {live}/{n}, each name loaded into vLLM exactly once {loaded_once}/{n}, "
        f"registry + notifications exactly once {once}/{n}",
    )
    assert not problems, "\n".join(problems)
    assert complete == once == loaded_once == live == n


def _ledger(base: Path) -> Ledger:
    return Ledger(base / "run" / "ledger.jsonl")


def _unload(server) -> None:
    """Unload this use case's names from the shared server (FACTS 5: keep LoRA slots free)."""
    with VllmClient(VllmServer(url=server.url), timeout_s=300) as client:
        for name in client.adapters():
            if is_managed(name, USE_CASE):
                client.unload(name)


def test_fault_hook_is_inert_without_the_variable():
    from flows.faults import ENV, fault_point

    assert ENV not in os.environ
    for point in POINTS:
        fault_point(point)  # would kill this process if the hook were armed
