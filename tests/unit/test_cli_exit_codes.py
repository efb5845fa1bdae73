"""Argument and recipe problems exit 2 with a line, never a traceback (README "exit codes")."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from feinschliff.cli import app
from feinschliff.ingest import run_ingest
from feinschliff.recipe import FeedbackSpec
from tests.cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")
runner = CliRunner()


def test_gate_with_a_missing_or_foreign_report_is_an_argument_error(tmp_path):
    code, said = run_cli("gate", DEMO, "--report", str(tmp_path / "report.json"))
    assert code == 2 and said.startswith("--report ") and "No such file" in said
    code, said = run_cli("gate", DEMO, "--report", str(tmp_path))
    assert code == 2 and said.startswith("--report ")
    (tmp_path / "other.json").write_text(json.dumps({"rows": 3}))
    code, said = run_cli("gate", DEMO, "--report", str(tmp_path / "other.json"))
    assert code == 2 and "not an evaluate report" in said


def test_a_report_of_another_use_case_decides_nothing(tmp_path):
    """A report of use case A given to the gate (or register --promote) of recipe B decided B's
    promotion with A's scores."""
    metric = {"value": 0.9, "stderr": None, "samples": 60}
    report = {
        "use_case": "billing-de",
        "metrics": {"base": {"de_wissen_mc/acc_norm": {**metric, "value": 0.1}},
                    "candidate": {"de_wissen_mc/acc_norm": metric}},
    }  # fmt: skip
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    code, said = run_cli("gate", DEMO, "--report", str(path))
    assert code == 2 and "evaluated use case 'billing-de', the recipe is 'support-de-demo'" in said
    assert not (tmp_path / "decision.json").exists()


def test_validate_print_writes_a_recipe_that_validates(tmp_path):
    """`validate --print > resolved.yaml` gives a usable recipe: the ok line goes to stderr."""
    result = runner.invoke(app, ["validate", DEMO, "--print"])
    assert result.exit_code == 0
    assert "ok (support-de-demo" in result.stderr and "ok (" not in result.stdout
    resolved = yaml.safe_load(result.stdout)
    for src in resolved["feedback"]["sources"]:  # the demo's paths are relative to recipes/
        src["path"] = str((ROOT / "recipes" / src["path"]).resolve())
    again = tmp_path / "resolved.yaml"
    again.write_text(yaml.safe_dump(resolved, sort_keys=False))
    assert runner.invoke(app, ["validate", str(again)]).exit_code == 0


def test_an_unknown_model_alias_is_an_argument_error():
    code, said = run_cli("models", "fetch", "nosuch")
    assert code == 2 and "unknown model alias 'nosuch'" in said


def test_train_on_too_small_a_gpu_exits_2_like_run(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    data = tmp_path / "data"
    spec = {"sources": [{"kind": "langfuse", "path": str(ROOT / "data/samples/langfuse")}]}
    run_ingest(FeedbackSpec.model_validate({**spec, "pii": {"mode": "off"}}), data)
    recipe = str(ROOT / "recipes" / "support-de-8b.yaml")
    out = tmp_path / "o"
    sets = ["--set", "train.gpu=rtx-4090", "--set", "train.hyperparameters.batch_size=8"]
    code, said = run_cli("train", recipe, "--data", str(data), "--out", str(out), *sets)
    assert code == 2 and "does not fit train.gpu=rtx-4090" in said
    assert not out.exists()  # refused before anything was written


def test_register_approval_needs_the_report_it_answers(tmp_path):
    code, said = run_cli("register", DEMO, "--adapter", str(tmp_path), "--approve")
    assert code == 2 and "give --report too" in said
