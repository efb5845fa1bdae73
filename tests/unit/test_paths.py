"""Where the bundled assets are found, and a clear error where they are not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_root_without_evals_is_a_clear_error_not_a_later_misleading_one(tmp_path):
    """Installed outside a checkout, validate said a gate metric "has no eval data"."""
    env = {"FEINSCHLIFF_PROJECT_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "feinschliff.cli",
            "validate",
            str(ROOT / "recipes" / "demo-de.yaml"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert f"no evals/ folder in {tmp_path}" in run.stderr
    assert "FEINSCHLIFF_PROJECT_ROOT" in run.stderr and "Traceback" not in run.stderr


def test_the_checkout_is_the_default_root(monkeypatch):
    from feinschliff.paths import bundled_task_names, project_root

    monkeypatch.delenv("FEINSCHLIFF_PROJECT_ROOT", raising=False)
    assert project_root() == ROOT
    assert "de_wissen_mc" in bundled_task_names()
