"""`feinschliff register` records where a version came from as the flow does: above all its
base model, which warm starts and evaluate's production baseline check against the recipe's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from feinschliff.cli import app
from feinschliff.evaluate.stage import other_base_model
from feinschliff.recipe_loader import load_recipe
from feinschliff.registry import version_adapter
from feinschliff.train.warm_start import WarmStartError, find_warm_start
from tests.unit.adapter_factory import make_base, make_train_output

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")


def _register(tmp_path: Path, *extra: str) -> tuple[Path, Path]:
    base = make_base(tmp_path / "base")
    out = tmp_path / "train-out"
    make_train_output(out, str(base))
    reg = tmp_path / "reg"
    sets = ["--set", f"base_model.name={base}", "--set", f"register.registry={reg}"]
    args = ["register", DEMO, "--adapter", str(out), "--promote", *sets, *extra]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return base, reg


def test_a_cli_registered_production_is_not_compared_or_continued_on_another_base(tmp_path):
    """The CLI recorded only the training metrics: a production registered with `register`
    was evaluated as the baseline, and continued by `init_from: production`, after the recipe
    moved to another base model (same shapes: nothing failed, weights of another model)."""
    base, reg = _register(tmp_path)
    prod = version_adapter(reg, "support-de-demo", "v0001")
    manifest = json.loads((prod.dir / "manifest.json").read_text())
    assert manifest["base_model"]["name"] == str(base)
    assert manifest["recipe_sha256"] and manifest["train"]["method"] == "sft"

    other = make_base(tmp_path / "other")
    moved = load_recipe(
        DEMO,
        [
            f"base_model.name={other}",
            f"register.registry={reg}",
            "train.init_from=production",
        ],
    )
    assert "not on " + str(other) in (other_base_model(moved, prod) or "")
    with pytest.raises(WarmStartError, match="trained on base model"):
        find_warm_start(moved, "v0001")

    same = load_recipe(DEMO, [f"base_model.name={base}", f"register.registry={reg}"])
    assert other_base_model(same, prod) is None  # the same base: compared as before


def _skipping_report(tmp_path: Path, ref, why: str) -> Path:
    metric = {"value": 0.5, "stderr": 0.01, "samples": 100}
    report = {
        "use_case": "support-de-demo",
        "models": {"candidate": {"adapter": ref.path, "adapter_sha256": ref.sha256}},
        "metrics": {
            "base": {"de_wissen_mc/acc_norm": {**metric, "value": 0.4}},
            "candidate": {"de_wissen_mc/acc_norm": metric},
        },
        "skipped": {"production": why},
    }
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    return path


def _promote_args(base: Path, reg: Path, out: Path, report: Path) -> list[str]:
    rule = "gate.rules=[{rule: min, metric: de_wissen_mc/acc_norm, threshold: 0.4}]"
    sets = ["--set", f"base_model.name={base}", "--set", f"register.registry={reg}"]
    return ["register", DEMO, "--adapter", str(out), "--report", str(report), "--promote", *sets, "--set", rule]  # fmt: skip


def test_a_report_that_left_out_a_production_on_another_base_model_can_promote(tmp_path):
    """After a base model change evaluate leaves the old production out (the gate compares
    with base); `register --promote` refused that report as "compared with no production, but
    production is v0001: re-run evaluate", and every re-run gave the same report."""
    from tests.cli_helpers import run_cli

    old, reg = _register(tmp_path)  # production v0001, trained on `old`
    new = make_base(tmp_path / "new")
    out = tmp_path / "new-out"
    ref = make_train_output(out, str(new))
    why = f"production support-de-demo/v0001 was trained on base model {old}, not on {new}"
    report = _skipping_report(tmp_path, ref, why)
    code, said = run_cli(*_promote_args(new, reg, out, report))
    assert code == 0, said
    assert said.strip().endswith("support-de-demo/v0002")


def test_a_report_that_left_out_production_still_needs_evaluate_to_leave_it_out(tmp_path):
    """The same report against a production on the recipe's own base model (one evaluate would
    compare with) decides nothing: exit 2, production unchanged."""
    from feinschliff.registry import read_aliases
    from tests.cli_helpers import run_cli

    base, reg = _register(tmp_path)
    out = tmp_path / "other-out"
    ref = make_train_output(out, str(base), seed=2.0)
    report = _skipping_report(tmp_path, ref, "production was trained on another base model")
    code, said = run_cli(*_promote_args(base, reg, out, report))
    assert code == 2 and "re-run `evaluate`" in said
    assert read_aliases(reg, "support-de-demo")["production"] == "v0001"
