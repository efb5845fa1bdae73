"""Ingest drops feedback rows that hold a judge question when the judge asks the bundled ones.

The gate's contamination metric checks the judge questions the judge uses; a row ingest kept
would fail that rule after training. Ingest and generate therefore decontaminate against the
same data ``evaluate`` reads (``recipe.evaluated_sets``).
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from feinschliff.cli import app
from feinschliff.generate.stage import eval_set_names
from feinschliff.paths import judge_questions_file
from feinschliff.recipe_loader import load_recipe

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")
JUDGE = "evaluate.judge={base_url: 'http://127.0.0.1:8000/v1', model: judge}"


def _export(folder: Path) -> str:
    question = json.loads(judge_questions_file().read_text(encoding="utf-8").splitlines()[0])
    texts = [
        (
            question["turns"][0],
            "Sehr geehrte Frau Berger, danke für Ihre Nachricht zur Abrechnung.",
        ),
        ("Wie melde ich meinen Zählerstand?", "In der App unter Zählerstand melden."),
    ]
    obs = [
        {
            "id": f"o{i}",
            "traceId": f"t{i}",
            "type": "GENERATION",
            "startTime": "2026-01-01T00:00:00Z",
            "input": json.dumps([{"role": "user", "content": q}], ensure_ascii=False),
            "output": json.dumps({"role": "assistant", "content": a}, ensure_ascii=False),
        }
        for i, (q, a) in enumerate(texts)
    ]
    scores = [
        {
            "id": f"s{o['id']}",
            "name": "user-feedback",
            "dataType": "BOOLEAN",
            "value": True,
            "subject": {"kind": "observation", "id": o["id"]},
        }
        for o in obs
    ]
    folder.mkdir()
    (folder / "obs.json").write_text(json.dumps({"data": obs, "meta": {}}))
    (folder / "scores.json").write_text(json.dumps({"data": scores, "meta": {}}))
    return question["turns"][0]


def _ingest(tmp_path: Path, name: str, *sets: str) -> dict:
    source = f"feedback.sources=[{{kind: langfuse, path: '{tmp_path / 'lf'}'}}]"
    args = ["ingest", DEMO, "--out", str(tmp_path / name), "--set", source]
    args += ["--set", "feedback.heldout_fraction=0", "--set", "evaluate.tasks=[de_wissen_mc]"]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(app, [*args, "--pii", "off"])
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / name / "manifest.json").read_text())


def test_a_row_holding_a_bundled_judge_question_is_dropped_when_the_judge_asks_them(tmp_path):
    question = _export(tmp_path / "lf")
    plain = _ingest(tmp_path, "plain")
    assert plain["counts"]["sft.jsonl"] == 2  # no judge: the question is no eval data
    judged = _ingest(tmp_path, "judged", JUDGE)
    assert judged["counts"]["sft.jsonl"] == 1
    assert judged["drops"]["contaminated_sft_row"] == 1
    assert question not in (tmp_path / "judged" / "sft.jsonl").read_text(encoding="utf-8")
    heldout_only = _ingest(
        tmp_path, "heldout", JUDGE.replace("judge}", "judge, questions: heldout}")
    )
    assert heldout_only["counts"]["sft.jsonl"] == 2  # the bundled questions are not asked


def test_generate_decontaminates_against_the_same_sets():
    recipe = load_recipe(Path(DEMO), ["register.registry=/tmp/reg", JUDGE])
    assert str(judge_questions_file()) in eval_set_names(recipe)
