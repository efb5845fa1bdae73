"""`feinschliff generate`: output folders that overlap an input are refused before anything is
written, and a budget stop says the same row counts in the log and in the CLI's warning.

The teacher (a remote API) cannot run here: as in tests/unit/test_generate_review_fixes.py, the
distilabel child is replaced by the leaves it would have saved; the stage, its filters, the
mix and the CLI run for real.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from feinschliff.artifacts import DatasetRef, OutputInUse, completed_hash, mark_complete
from feinschliff.cli import app, main
from feinschliff.generate import stage
from feinschliff.generate.mix import merge_datasets
from feinschliff.generate.stage import run_generate
from feinschliff.recipe_loader import load_recipe
from feinschliff.specs.generate import MixSpec

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
Q1 = "Wie kann ich meinen Zählerstand im Kundenportal melden?"
Q2 = "Wie kann ich meinen Abschlag für den Strom ändern?"
GOOD = "Gerne helfe ich Ihnen: das geht ganz einfach im Kundenportal unter Verträge."
BAD = "Das weiß ich leider nicht, bitte rufen Sie uns doch einfach an."
STATUS = {k: 0 for k in ("requests", "tokens", "cache_hits", "rejected", "refused", "truncated")}


def _recipe(tmp_path: Path) -> Path:
    data = yaml.safe_load((ROOT / "recipes" / "demo-de.yaml").read_text())
    for src in data["feedback"]["sources"]:
        src["path"] = str((ROOT / "recipes" / src["path"]).resolve())
    (tmp_path / "themen.txt").write_text("Zählerstand\nAbschlag\n", encoding="utf-8")
    data["generate"] = {
        "seeds": {"topics": str(tmp_path / "themen.txt"), "pii": "off"},
        "num_instructions": 2,
        "teacher": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "teacher"},
        "preference": {"num_generations": 2},
        "filters": {"decontaminate": False},
        "budget": {"max_requests": 3},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _pref_leaf(q: str) -> dict:
    user = [{"role": "user", "content": q}]
    return {
        "seed_id": "s1",
        "instruction": q,
        "generations": [GOOD, BAD],
        "ratings": [5, 1],
        "chosen": [*user, {"role": "assistant", "content": GOOD}],
        "rejected": [*user, {"role": "assistant", "content": BAD}],
        "chosen_rating": 5,
        "rejected_rating": 1,
    }


@pytest.fixture()
def child(tmp_path, monkeypatch):
    """The teacher's run, as its saved leaves: two questions, each a rated pair; the budget
    stopped it (max_requests=3)."""
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    leaves = {
        "instructions_raw": [{"seed_id": "s1", "instructions": [Q1, Q2]}],
        "preferences": [_pref_leaf(Q1), _pref_leaf(Q2)],
    }
    stopped = {**STATUS, "requests": 3, "refused": 1}
    stopped["budget_exhausted"] = "budget: max_requests=3 reached"
    monkeypatch.setattr(stage, "_run_child", lambda *a: stopped)
    monkeypatch.setattr(stage, "_load_leaves", lambda p: leaves)


def _ingest(root: Path) -> DatasetRef:
    (root / "heldout").mkdir(parents=True)
    for name in ("sft.jsonl", "preference.jsonl", "kto.jsonl", "heldout/sft.jsonl"):
        (root / name).write_text("")
    return DatasetRef(path=str(root), sha256=mark_complete(root, stage="ingest", key="i"))


# (out, feedback, mixed-out) relative to tmp_path; the flag the refusal names
CASES = [
    ("ing/gen", "ing", None, "--out"),  # the probe: train --data ing failed afterwards
    ("work", "work/ing", None, "--out"),
    ("gen", "ing", "ing/mixed", "--mixed-out"),
    ("genA", "ing", "genA/mixed", "--mixed-out"),  # the probe: train --data genA failed
    ("m/gen", "ing", "m", "--mixed-out"),
]


@pytest.mark.parametrize(("out", "feedback", "mixed", "flag"), CASES)
def test_outputs_overlapping_an_input_are_refused_before_anything_is_written(
    tmp_path, child, out, feedback, mixed, flag
):
    fb = _ingest(tmp_path / feedback)
    args = ["generate", str(_recipe(tmp_path)), "--out", str(tmp_path / out)]
    args += ["--feedback", str(fb.dir)]
    args += ["--mixed-out", str(tmp_path / mixed)] if mixed else []
    result = runner.invoke(app, args)
    assert isinstance(result.exception, OutputInUse), result.output
    assert str(result.exception).startswith(f"{flag} {tmp_path}")
    assert "(nothing was written)" in str(result.exception)
    assert completed_hash(fb.dir) == fb.sha256  # the ingest output is still complete
    for path in (out, mixed):
        if path and not (tmp_path / feedback).is_relative_to(tmp_path / path):
            assert not (tmp_path / path).exists(), path


def test_overlaps_exit_2_as_trains_do(tmp_path, child, monkeypatch, capsys):
    fb = _ingest(tmp_path / "ing")
    argv = ["feinschliff", "generate", str(_recipe(tmp_path)), "--out", str(fb.dir / "gen")]
    monkeypatch.setattr(sys, "argv", [*argv, "--feedback", str(fb.dir)])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert "--out" in capsys.readouterr().err and completed_hash(fb.dir) == fb.sha256


def test_the_library_refuses_overlaps_too(tmp_path, child):
    """The flow calls run_generate and merge_datasets directly."""
    fb = _ingest(tmp_path / "ing")
    recipe = load_recipe(_recipe(tmp_path))
    with pytest.raises(OutputInUse, match=r"--out .* overlaps the --feedback folder"):
        run_generate(recipe, fb.dir / "gen", feedback=fb)
    gen = run_generate(recipe, tmp_path / "gen", feedback=fb)
    for inside in (gen.dir / "mixed", fb.dir / "mixed", tmp_path):
        with pytest.raises(OutputInUse, match="--mixed-out .* overlaps the --(out|feedback)"):
            merge_datasets(fb, gen, MixSpec(), inside)
    assert completed_hash(fb.dir) == fb.sha256 and completed_hash(gen.dir) == gen.sha256
    assert not (gen.dir / "mixed").exists() and not (fb.dir / "mixed").exists()


def test_a_budget_stop_says_the_same_row_counts_in_the_log_and_the_warning(tmp_path, child, caplog):
    """The log said "2 rows written" (SFT only), the CLI "4 rows written" (SFT + preference)."""
    out = tmp_path / "gen"
    with caplog.at_level(logging.WARNING, logger="feinschliff.generate.stage"):
        result = runner.invoke(app, ["generate", str(_recipe(tmp_path)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert (counts["sft.jsonl"], counts["preference.jsonl"]) == (2, 2)
    said = (
        "stopped early (budget: max_requests=3 reached); 2 SFT + 2 preference rows written "
        "(rerun to continue)"
    )
    assert f"warning: {said}" in result.output
    assert [r.getMessage() for r in caplog.records] == [f"generate: {said}"]
