"""The CLI explains itself: every command has --help that says what it does and writes."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from feinschliff.cli import app

runner = CliRunner()

COMMANDS = {
    (): ["ingest", "train", "evaluate", "gate", "register", "run", "validate", "schema"],
    ("validate",): ["dotted.path", "exits 2"],
    ("init",): ["recipe", "--force"],
    ("schema",): ["JSON Schema"],
    ("models", "fetch"): ["sha256", "FEINSCHLIFF_HOME"],
    ("models", "list"): ["cached"],
    ("ingest",): ["sft.jsonl", "preference.jsonl", "quarantine.jsonl", "manifest.json", "--set"],
    ("train",): ["adapter/", "metrics.json", "loss.png", "resumes"],
    ("evaluate",): ["report.json", "report.md", "comparison.png"],
    ("gate",): ["Exit 0", "Exit 3", "threshold"],
    ("registry", "list"): ["aliases"],
    ("registry", "show"): ["manifest"],
    ("registry", "history"): ["oldest first", "--plot"],
    ("registry", "reconcile"): ["--root", "NAME@VERSION"],
    ("register",): ["immutable", "manifest", "--promote", "--approve"],
    ("run",): ["Prefect", "Exit 0", "3 rejected", "--set"],
}


@pytest.mark.parametrize("cmd", list(COMMANDS), ids=lambda c: " ".join(c) or "root")
def test_help_explains(cmd):
    result = runner.invoke(app, [*cmd, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for needle in COMMANDS[cmd]:
        assert needle in text, f"{needle!r} missing from `feinschliff {' '.join(cmd)} --help`"


def test_schema_prints_json():
    import json

    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.output)["title"] == "feinschliff recipe"


def test_run_refuses_a_training_that_cannot_fit_the_gpu():
    """`feinschliff run` checks the memory estimate before Prefect starts and shows the numbers."""
    import subprocess
    import sys
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "support-de-8b.yaml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "feinschliff.cli",
            "run",
            str(recipe),
            "--set",
            "train.gpu=rtx-4090",
            "--set",
            "train.hyperparameters.batch_size=16",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "does not fit train.gpu=rtx-4090" in proc.stderr and "activations" in proc.stderr
    assert "a micro-batch of" in proc.stderr


def test_deployments_sync_reports_every_invalid_recipe_before_deploying(tmp_path):
    """Validation comes first: exit 2 with one line per error of every recipe, and no Prefect
    API is contacted (PREFECT_API_URL points at a closed port: a deploy attempt would fail)."""
    import os
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("schema_version: 1\nuse_case: x\n")
    worse = tmp_path / "worse.yaml"
    worse.write_text("use_case: [unclosed\n")
    proc = subprocess.run(
        [sys.executable, "-m", "feinschliff.cli", "deployments", "sync", str(bad), str(worse)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"},
    )
    assert proc.returncode == 2, proc.stderr
    assert f"{bad}: train: Field required" in proc.stderr
    assert f"{worse}: (yaml):" in proc.stderr
    assert "Traceback" not in proc.stderr
