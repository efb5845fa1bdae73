"""Gate rules and eval sets that could never work are refused when the recipe is read, and a
report that is no evaluate report is exit 2 (from a probe of evaluate and gate):

- `no_regression` on a metric computed for the candidate only (judge/win_rate,
  contamination/overlaps, poisoning/suspicious_rows) failed every run, saying the baseline's
  value was missing; `win_rate`/`contamination`/`poisoning` rules on another metric likewise;
- `higher_is_better: false` on a metric of feinschliff's own (no direction in the report)
  turned the rule around: a drop of 0.7 passed;
- a `.json` (or any non-JSONL) eval set was taken for a task name without local data, so
  nothing was decontaminated against it (a warning in the log only); `.JSONL` likewise;
- `"candidate": []` in a report crashed `gate` with an AttributeError traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from feinschliff.cli import app
from feinschliff.recipe_loader import RecipeError, load_recipe
from tests.unit.test_ingest_judge_decontam import _export, _ingest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo-de.yaml"
JUDGE = "evaluate.judge={base_url: 'http://127.0.0.1:8000/v1', model: judge}"


@pytest.mark.parametrize(
    ("rules", "says"),
    [
        ("[{rule: no_regression, metric: contamination/overlaps}]", "candidate only"),
        ("[{rule: no_regression, metric: poisoning/suspicious_rows}]", "candidate only"),
        ("[{rule: no_regression, metric: judge/win_rate}]", "candidate only"),
        ("[{rule: win_rate, metric: judge/score}]", "reads 'judge/win_rate' only"),
        ("[{rule: contamination, metric: de_wissen_mc/acc}]", "reads 'contamination/overlaps'"),
        (
            "[{rule: no_regression, metric: heldout/preference_accuracy, higher_is_better: false}]",
            "is higher-is-better",
        ),
    ],
)
def test_rules_that_cannot_work_are_refused(rules, says):
    with pytest.raises(RecipeError) as exc:
        load_recipe(DEMO, [JUDGE, f"gate.rules={rules}"])
    assert "gate.rules.0.metric" in str(exc.value) and says in str(exc.value)


def test_the_rules_that_can_work_still_load():
    rules = (
        "[{rule: win_rate}, {rule: contamination}, {rule: poisoning},"
        " {rule: no_regression, metric: judge/score},"
        " {rule: max, metric: contamination/overlaps, threshold: 0}]"
    )
    assert len(load_recipe(DEMO, [JUDGE, f"gate.rules={rules}"]).gate.rules) == 5


def test_a_non_jsonl_eval_set_is_refused_and_jsonl_in_capitals_is_a_file(tmp_path):
    with pytest.raises(RecipeError, match="neither a task name nor a .jsonl file"):
        load_recipe(DEMO, ["feedback.decontamination.eval_sets=[my_eval.json]"])
    question = _export(tmp_path / "lf")  # a feedback row holding this eval text
    evals = tmp_path / "MY_EVAL.JSONL"
    evals.write_text(json.dumps({"question": question}, ensure_ascii=False) + "\n")
    manifest = _ingest(tmp_path, "out", f"feedback.decontamination.eval_sets=['{evals}']")
    assert manifest["decontamination"]["unchecked"] == []
    assert sum(manifest["decontamination"]["dropped_by_eval_set"].values()) >= 1


def test_strict_validate_names_a_missing_jsonl_eval_set(tmp_path):
    missing = tmp_path / "nowhere.jsonl"
    res = CliRunner().invoke(
        app,
        [
            "validate",
            "--strict",
            str(DEMO),
            "--set",
            f"feedback.decontamination.eval_sets=['{missing}']",
        ],
    )
    assert res.exit_code == 2 and f"feedback.decontamination.eval_sets.0: {missing}" in res.stderr


def test_a_report_with_a_malformed_role_is_an_argument_error(tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"use_case": "support-de-demo", "metrics": {"candidate": []}}))
    res = CliRunner().invoke(app, ["gate", str(DEMO), "--report", str(report)])
    assert res.exception.code == 2  # main() exits with the Failure's code
    assert "metrics.candidate is no mapping" in str(res.exception)
