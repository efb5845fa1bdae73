"""Against a real Prefect server (not the test harness): deployments from recipes, a run
triggered through the API with an override, executed by a real process worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory, demo_model):
    """`prefect server start` on a free loopback port (SQLite in a temp PREFECT_HOME) plus a
    process worker on pool `local`; both stopped by process group at the end."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    env = dict(os.environ)
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "storage"),
            "FEINSCHLIFF_HOME": str(home / "fs"),
        }
    )
    (home / "fs").mkdir()
    (home / "fs" / "models").symlink_to(Path(demo_model).parent, target_is_directory=True)
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    procs = [server]
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            raise RuntimeError(
                "prefect server did not become healthy:\n"
                + (home / "server.log").read_text()[-2000:]
            )
        for pool in ("local", "gpu"):  # "gpu" stands in for a GPU pool: same process type here
            subprocess.run(
                [str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process"],
                env=env,
                check=True,
                capture_output=True,
            )
            wlog = (home / f"worker-{pool}.log").open("w")
            procs.append(
                subprocess.Popen(
                    [str(BIN / "prefect"), "worker", "start", "--pool", pool],
                    env=env,
                    stdout=wlog,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                    start_new_session=True,
                )
            )
        yield env
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)


def test_deployment_sync_trigger_and_complete(prefect_server):
    env = prefect_server
    cli = [sys.executable, "-m", "feinschliff.cli"]
    args = [*cli, "deployments", "sync", "recipes/demo-de.yaml", "--pool", "local"]
    args += ["--train-pool", "gpu", "--paused", "--set", "evaluate.limit=6"]
    sync = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True)
    assert sync.returncode == 0, sync.stderr
    assert sync.stdout.split()[-2:] == ["retrain/support-de-demo", "train-stage/support-de-demo"]
    again = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0  # idempotent update

    api = env["PREFECT_API_URL"]
    dep = httpx.get(f"{api}/deployments/name/retrain/support-de-demo").json()
    crons = [s["schedule"]["cron"] for s in dep["schedules"]]
    assert crons == ["0 2 * * 1"] and dep["schedules"][0]["schedule"]["timezone"] == "Europe/Berlin"
    assert dep["parameters"]["recipe_path"] == "recipes/demo-de.yaml"
    assert dep["parameters"]["train_deployment"] == "train-stage/support-de-demo"
    assert dep["parameters"]["overrides"] == ["evaluate.limit=6"]  # --set: the default
    assert dep["work_pool_name"] == "local"
    trainer = httpx.get(f"{api}/deployments/name/train-stage/support-de-demo").json()
    assert trainer["work_pool_name"] == "gpu"
    assert "recipe_path" in dep["parameter_openapi_schema"]["properties"]  # the UI form
    # training: one run per use case at a time, another waits in the queue; retrain has no
    # deployment limit (a pause for approval frees its slot): its runs queue on a global
    # concurrency limit inside the flow
    assert trainer["global_concurrency_limit"]["limit"] == 1
    assert trainer["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    assert dep.get("global_concurrency_limit") is None

    overrides = [
        "train.hyperparameters.max_steps=3",
        "train.hyperparameters.max_length=128",
        "evaluate.limit=6",
        "evaluate.heldout=false",
        "gate.rules.0.tolerance=1.0",
        "gate.rules.1.threshold=6",
    ]
    run = httpx.post(
        f"{api}/deployments/{dep['id']}/create_flow_run",
        json={"parameters": {"recipe_path": "recipes/demo-de.yaml", "overrides": overrides}},
    ).json()
    deadline = time.time() + 900
    state = None
    while time.time() < deadline:
        state = httpx.get(f"{api}/flow_runs/{run['id']}").json()["state"]["type"]
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(3)
    assert state == "COMPLETED", state
    arts = httpx.post(
        f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}
    ).json()
    keys = {a["key"] for a in arts}
    assert {
        "support-de-demo-recipe",
        "support-de-demo-ingest",
        "support-de-demo-loss",
        "support-de-demo-evaluation",
        "support-de-demo-gate",
    } <= keys
    train_runs = httpx.post(
        f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [trainer["id"]]}}}
    ).json()
    assert len(train_runs) == 1 and train_runs[0]["state"]["type"] == "COMPLETED"
    assert train_runs[0]["work_pool_name"] == "gpu"
    metrics = Path(env["FEINSCHLIFF_HOME"]) / "runs" / "support-de-demo" / "train" / "metrics.json"
    assert '"global_step": 3' in metrics.read_text()

    # `feinschliff run` against the same server and workdir: stages reused, exit code and
    # summary table by the gate's decision (3 rejected, 0 promoted)
    cmd = [*cli, "run", "recipes/demo-de.yaml"]
    # another adapter than the deployed run's (alpha): the same one is production already
    reject = [*overrides, "train.lora.alpha=16", "gate.rules.1.threshold=1000"]
    rejected = subprocess.run(
        [*cmd, *(a for o in reject for a in ("--set", o))],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert rejected.returncode == 3, rejected.stderr[-2000:]
    table = rejected.stdout
    assert "metric" in table and "de_wissen_mc/acc_norm" in table, table
    assert "gate min_samples" in table and "FAIL" in table and "decision: REJECTED" in table
    promoted = subprocess.run(
        [*cmd, *(a for o in overrides for a in ("--set", o))],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert promoted.returncode == 0, promoted.stderr[-2000:]
    assert "UNCHANGED: the adapter is already production v0001" in promoted.stdout, promoted.stdout


def test_kubernetes_gpu_pool_is_accepted_by_the_server(prefect_server):
    env = prefect_server
    template = json.loads((ROOT / "configs" / "prefect" / "kubernetes-gpu.json").read_text())
    resp = httpx.post(
        f"{env['PREFECT_API_URL']}/work_pools/",
        json={"name": "k8s-gpu", "type": "kubernetes", "base_job_template": template},
    )
    assert resp.status_code == 201, resp.text
    pool = httpx.get(f"{env['PREFECT_API_URL']}/work_pools/k8s-gpu").json()
    assert pool["base_job_template"]["variables"]["properties"]["gpu_count"]["default"] == 1


def test_ui_shows_the_deployments(prefect_server, tmp_path):
    """Headless Chromium renders the Prefect UI's deployments page; the README's screenshot is
    this test's output (FEINSCHLIFF_UPDATE_SCREENSHOTS=1 writes it to docs/)."""
    import shutil

    from PIL import Image

    env = prefect_server
    sync = subprocess.run(
        [
            sys.executable,
            "-m",
            "feinschliff.cli",
            "deployments",
            "sync",
            "recipes/demo-de.yaml",
            "recipes/support-de-8b.yaml",
            "--pool",
            "local",
            "--paused",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert sync.returncode == 0, sync.stderr
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is installed by `make test` (scripts/install_system.sh)"
    shot = tmp_path / "prefect-ui.png"
    ui = env["PREFECT_API_URL"].removesuffix("/api") + "/deployments"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chrome'}",
            "--hide-scrollbars",
            "--window-size=1400,800",
            "--virtual-time-budget=20000",
            f"--screenshot={shot}",
            ui,
        ],
        capture_output=True,
        timeout=120,
    )
    img = Image.open(shot).convert("RGB")
    assert img.size == (1400, 800)
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # a rendered page, not a blank canvas
    if os.environ.get("FEINSCHLIFF_UPDATE_SCREENSHOTS") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copy(shot, ROOT / "docs" / "prefect-ui.png")


def test_a_resync_keeps_a_paused_deployment_paused(prefect_server):
    """Someone paused the schedule in the UI; a plain `deployments sync` must not restart it."""
    env, api = prefect_server, prefect_server["PREFECT_API_URL"]
    sync = [sys.executable, "-m", "feinschliff.cli", "deployments", "sync"]
    sync += ["recipes/support-de-8b.yaml", "--pool", "local"]

    def paused_after(*flags: str) -> bool:
        done = subprocess.run([*sync, *flags], env=env, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return httpx.get(f"{api}/deployments/name/retrain/support-de").json()["paused"]

    assert paused_after("--paused") is True
    assert paused_after() is True  # kept
    assert paused_after("--active") is False
    assert paused_after() is False  # kept
