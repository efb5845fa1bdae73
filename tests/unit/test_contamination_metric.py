"""The gate's ``contamination/overlaps`` entry says what it checked: the bundled tasks, the
bundled judge questions when a judge uses them; upstream tasks (no local data) are listed as
unchecked, and with nothing checkable at all the value is None, so the gate's contamination
rule fails instead of passing on a 0 nobody computed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feinschliff.artifacts import AdapterRef, DatasetRef
from feinschliff.evaluate import stage
from feinschliff.evaluate.stage import contamination
from feinschliff.gate import decide_promotion
from feinschliff.paths import project_root
from feinschliff.recipe_loader import load_recipe
from feinschliff.specs.evaluate import GateSpec

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo-de.yaml"
JUDGE_FILE = "evals/judge/questions_de.jsonl"
MC_FILE = "evals/lm_eval_tasks/de_wissen_mc.jsonl"
GATE = GateSpec.model_validate({"rules": [{"rule": "contamination"}]})


def _first(rel: str) -> dict:
    return json.loads((project_root() / rel).read_text(encoding="utf-8").splitlines()[0])


def _sft(user: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": "ok"}]}


@pytest.fixture
def data(tmp_path) -> Path:
    """Training rows: judge question fs-001 verbatim, de_wissen_mc item 0, one clean row."""
    rows = [
        _sft(_first(JUDGE_FILE)["turns"][0]),
        _sft(_first(MC_FILE)["question"]),
        _sft("Wie spät ist es gerade bei Ihnen in Hamburg, bitte?"),
    ]
    d = tmp_path / "data"
    d.mkdir()
    (d / "sft.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return d


def _gate_passes(entry: dict) -> bool:
    report = {"metrics": {"candidate": {"contamination/overlaps": entry}}}
    return decide_promotion(report, GATE).promote


def test_upstream_tasks_only_give_no_value_and_the_gate_fails(data):
    entry = contamination(data, ["arc_de", "m_mmlu_de"])
    assert entry["value"] is None  # was 0.0: nothing was checked
    assert entry["eval_files"] == [] and entry["unchecked"] == ["arc_de", "m_mmlu_de"]
    assert entry["samples"] == 3
    assert not _gate_passes(entry)


def test_bundled_and_upstream_tasks_count_and_list_the_unchecked(data):
    entry = contamination(data, ["de_wissen_mc", "arc_de"])
    assert entry["value"] == 1.0 and entry["eval_files"] == [MC_FILE]
    assert entry["unchecked"] == ["arc_de"] and entry["held_out"] == []
    assert not _gate_passes(entry)


def test_the_judge_questions_are_checked_when_the_judge_uses_them(data):
    assert contamination(data, ["de_wissen_mc"])["value"] == 1.0
    entry = contamination(data, ["de_wissen_mc"], judge_questions=True)
    assert entry["value"] == 2.0  # the judge question copied into training is found too
    assert entry["eval_files"] == [MC_FILE, JUDGE_FILE]
    # upstream tasks plus the judge: the judge file was checked, so there is a value
    entry = contamination(data, ["arc_de"], judge_questions=True)
    assert entry["value"] == 1.0 and entry["unchecked"] == ["arc_de"]


def test_the_use_case_task_is_held_out_by_construction(data):
    entry = contamination(data, ["usecase_heldout"])
    assert entry["value"] == 0.0 and entry["eval_files"] == []
    assert entry["held_out"] == ["usecase_heldout"] and entry["unchecked"] == []
    assert _gate_passes(entry)


def test_a_clean_dataset_passes(tmp_path):
    d = tmp_path / "clean"
    d.mkdir()
    (d / "sft.jsonl").write_text(json.dumps(_sft("Hallo, wie geht es Ihnen heute?")) + "\n")
    entry = contamination(d, ["de_wissen_mc", "usecase_heldout"], judge_questions=True)
    assert entry["value"] == 0.0 and _gate_passes(entry)


@pytest.mark.parametrize(
    ("judge", "expected"),
    [
        (None, 1.0),
        ("{base_url: 'http://judge/v1', model: j, questions: both}", 2.0),
        ("{base_url: 'http://judge/v1', model: j, questions: bundled}", 2.0),
        ("{base_url: 'http://judge/v1', model: j, questions: heldout}", 1.0),
    ],
)
def test_run_evaluate_checks_the_judge_questions_it_uses(
    tmp_path, data, monkeypatch, judge, expected
):
    """The stage passes the judge's bundled questions to the metric exactly when the judge
    asks them.

    Stubbed: the model lookup and lm-eval (the unit suite runs without the demo model, and
    lm-eval on it takes minutes per case), and the judge and held-out metrics (the judge URL
    here is no server; they would need the model too). The poisoning scan, the report and the
    plot are the real ones. The real stage with real lm-eval, model and judge path:
    tests/integration/test_evaluate.py::test_report_has_heldout_metrics_and_position_biased_judge
    (it sees a contamination entry of 0 on the clean demo data; the judge-questions branch is
    checked only here)."""
    import feinschliff.evaluate.extra as extra

    overrides = ["register.registry=" + str(tmp_path / "registry")]
    if judge:
        overrides.append(f"evaluate.judge={judge}")
    recipe = load_recipe(DEMO, overrides)
    monkeypatch.setattr(stage, "resolve_model", lambda name: "model")
    monkeypatch.setattr(stage, "run_tasks", lambda *a, **k: {})
    monkeypatch.setattr(extra, "judge_and_heldout", lambda *a, **k: {})
    monkeypatch.setattr(stage, "check_judge", lambda spec: None)  # its early probe
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    ref = stage.run_evaluate(
        recipe,
        AdapterRef(path=str(adapter), sha256="a" * 64),
        tmp_path / "eval",
        data=DatasetRef(path=str(data), sha256="d" * 64),
    )
    report = json.loads((Path(ref.path) / "report.json").read_text(encoding="utf-8"))
    entry = report["metrics"]["candidate"]["contamination/overlaps"]
    assert entry["value"] == expected
    assert (JUDGE_FILE in entry["eval_files"]) is (expected == 2.0)
    assert entry["held_out"] == ["usecase_heldout"]  # the demo recipe evaluates it
    assert report["metrics"]["candidate"]["poisoning/suspicious_rows"]["value"] == 0
    assert (Path(ref.path) / "comparison.png").is_file()


def test_the_report_says_what_was_not_checked(data):
    report = {
        "use_case": "x",
        "metrics": {
            "base": {},
            "candidate": {"contamination/overlaps": contamination(data, ["arc_de"])},
        },
    }
    md = stage.render_markdown(report)
    assert "| contamination/overlaps | n/a | n/a | n/a |" in md
    assert "Contamination not checked against arc_de (no local data)." in md


def test_the_judge_questions_file_is_the_one_the_judge_reads():
    assert stage.judge_questions_file() == project_root() / JUDGE_FILE
    assert stage.judge_questions_file().is_file()
