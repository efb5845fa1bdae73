"""The CLI explains itself: every command has --help that says what it does and writes."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from feinschliff.cli import app

runner = CliRunner()

COMMANDS = {
    (): ["ingest", "train", "evaluate", "gate", "register", "run", "validate", "schema"],
    ("validate",): ["dotted.path", "exits 2"],
    ("schema",): ["JSON Schema"],
    ("models", "fetch"): ["sha256", "FEINSCHLIFF_HOME"],
    ("models", "list"): ["cached"],
    ("ingest",): ["sft.jsonl", "preference.jsonl", "quarantine.jsonl", "manifest.json", "--set"],
    ("train",): ["adapter/", "metrics.json", "loss.png", "resumes"],
    ("evaluate",): ["report.json", "report.md", "comparison.png"],
    ("gate",): ["Exit 0", "Exit 3", "threshold"],
    ("register",): ["immutable", "manifest", "--promote"],
    ("registry", "list"): ["aliases"],
    ("registry", "show"): ["manifest"],
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
