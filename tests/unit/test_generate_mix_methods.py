"""Synthetic rows reach every method that can train on them: the mix's kto.jsonl, KTO rows of
one label, and recipes whose `generate` makes no row their method trains on.

The ingest and generate outputs are made by hand, finished as the stages finish theirs
(``mark_complete``); the real mix and the real training-row reader run on them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from feinschliff.artifacts import DatasetRef, mark_complete
from feinschliff.generate.mix import merge_datasets
from feinschliff.recipe_loader import RecipeError, load_recipe
from feinschliff.specs.generate import MixSpec
from feinschliff.train import data

ROOT = Path(__file__).resolve().parents[2]


def _msg(role: str, text: str) -> list[dict]:
    return [{"role": role, "content": text}]


def _pair(q: str, source: str) -> dict:
    return {
        "prompt": _msg("user", q),
        "chosen": _msg("assistant", f"Gut: {q}"),
        "rejected": _msg("assistant", f"Schlecht: {q}"),
        "provenance": {"source": source},
    }


def _thumb(q: str, label: bool) -> dict:
    answer = f"{'Gut' if label else 'Schlecht'}: {q}"
    return {
        "prompt": _msg("user", q),
        "completion": _msg("assistant", answer),
        "label": label,
        "provenance": {"source": "langfuse"},
    }


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")


def _ingest(root: Path, kto: list[dict], pref: list[dict]) -> DatasetRef:
    _write(root / "sft.jsonl", [])
    _write(root / "preference.jsonl", pref)
    _write(root / "kto.jsonl", kto)  # ingest always writes it, empty without thumbs
    _write(root / "heldout" / "sft.jsonl", [])
    return DatasetRef(path=str(root), sha256=mark_complete(root, stage="ingest", key="i"))


def _generated(root: Path, pref: list[dict]) -> DatasetRef:
    _write(root / "sft.jsonl", [])
    _write(root / "preference.jsonl", pref)
    return DatasetRef(path=str(root), sha256=mark_complete(root, stage="generate", key="g"))


def _sources(rows: list[dict]) -> list[str]:
    return sorted(r["provenance"]["source"] for r in rows)


def test_synthetic_pairs_reach_kto_training_through_the_mix(tmp_path):
    """The probe: kto.jsonl was copied from the feedback unchanged, so a KTO recipe trained on
    the 24 feedback thumbs alone while the 4 synthetic pairs sat unused in preference.jsonl."""
    fb = _ingest(tmp_path / "ingest", [_thumb("a", True), _thumb("b", False)], [_pair("c", "x")])
    gen = _generated(tmp_path / "gen", [_pair("s1", "generate"), _pair("s2", "generate")])
    mixed = merge_datasets(fb, gen, MixSpec(feedback=1.0, synthetic=1.0), tmp_path / "mixed")

    rows = data.method_rows("kto", mixed.dir, provenance=True)
    assert _sources(rows) == ["generate"] * 4 + ["langfuse"] * 2
    synthetic = [r for r in rows if r["provenance"]["source"] == "generate"]
    assert sorted((r["prompt"][0]["content"], r["label"]) for r in synthetic) == [
        ("s1", False),
        ("s1", True),
        ("s2", False),
        ("s2", True),
    ]
    manifest = json.loads((mixed.dir / "manifest.json").read_text())
    assert manifest["counts"]["kto.jsonl"] == {"feedback": 2, "synthetic": 4, "mixed": 6}
    assert "kto.jsonl" in manifest["sha256"]
    assert "kto.jsonl" not in manifest["copied_from_feedback"]
    assert data.prepare_rows("kto", mixed.dir, eval_fraction=0.0, seed=1)["new_rows"] == 6


@pytest.mark.parametrize(
    ("weights", "feedback_rows", "synthetic_rows"),
    [((0.0, 1.0), 0, 4), ((2.0, 0.0), 4, 0), ((1.0, 0.5), 2, 2)],
)
def test_mix_weights_apply_to_kto_rows(tmp_path, weights, feedback_rows, synthetic_rows):
    """`mix.feedback: 0` still trained on every feedback thumb; a synthetic weight keeps whole
    pairs (the rows the mixed preference.jsonl keeps), so both labels stay balanced."""
    fb = _ingest(tmp_path / "ingest", [_thumb("a", True), _thumb("b", False)], [])
    gen = _generated(tmp_path / "gen", [_pair("s1", "generate"), _pair("s2", "generate")])
    mix = MixSpec(feedback=weights[0], synthetic=weights[1])
    mixed = merge_datasets(fb, gen, mix, tmp_path / "mixed")
    rows = data.read_jsonl(mixed.dir / "kto.jsonl")
    assert _sources(rows) == ["generate"] * synthetic_rows + ["langfuse"] * feedback_rows
    pairs = data.read_jsonl(mixed.dir / "preference.jsonl")
    assert len([r for r in rows if r["provenance"]["source"] == "generate"]) == 2 * len(pairs)


def test_feedback_without_thumbs_keeps_its_pairs_in_the_mixed_kto(tmp_path):
    """With no thumbs, KTO trains on the feedback's unpaired pairs: a mixed kto.jsonl of the
    synthetic rows alone must not hide them."""
    fb = _ingest(tmp_path / "ingest", [], [_pair("c", "argilla")])
    gen = _generated(tmp_path / "gen", [_pair("s1", "generate")])
    mixed = merge_datasets(fb, gen, MixSpec(feedback=1.0, synthetic=1.0), tmp_path / "mixed")
    rows = data.method_rows("kto", mixed.dir, provenance=True)
    assert _sources(rows) == ["argilla", "argilla", "generate", "generate"]


def test_kto_thumbs_of_one_kind_are_completed_by_the_preference_pairs(tmp_path):
    """Thumbs up only used to refuse KTO ("only one kind") although preference.jsonl held
    pairs; an answer the thumbs already judged is not added a second time."""
    _write(tmp_path / "kto.jsonl", [_thumb("a", True), _thumb("c", True)])
    _write(tmp_path / "preference.jsonl", [_pair("c", "argilla")])
    rows = data.method_rows("kto", tmp_path)
    got = sorted(
        (r["prompt"][0]["content"], r["completion"][0]["content"], r["label"]) for r in rows
    )
    assert got == [("a", "Gut: a", True), ("c", "Gut: c", True), ("c", "Schlecht: c", False)]
    # both labels in kto.jsonl: the thumbs alone, as before
    _write(tmp_path / "kto.jsonl", [_thumb("a", True), _thumb("b", False)])
    assert len(data.method_rows("kto", tmp_path)) == 2


def _recipe(tmp_path: Path, preference: bool) -> Path:
    recipe = yaml.safe_load((ROOT / "recipes" / "demo-de.yaml").read_text())
    for src in recipe["feedback"]["sources"]:
        src["path"] = str((ROOT / "recipes" / src["path"]).resolve())
    (tmp_path / "themen.txt").write_text("Tarifwechsel\n", encoding="utf-8")
    recipe["generate"] = {
        "seeds": {"topics": "themen.txt"},
        "teacher": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "t"},
    }
    if preference:
        recipe["generate"]["preference"] = {"num_generations": 2}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.parametrize("method", ["dpo", "orpo", "kto"])
def test_generate_without_preference_is_refused_for_preference_methods(tmp_path, method):
    """`validate` said ok, the teacher requests were spent, and DPO trained on feedback only:
    without `preference` generate writes SFT rows, which dpo/orpo/kto never read."""
    with pytest.raises(RecipeError) as err:
        load_recipe(_recipe(tmp_path, preference=False), [f"train.method={method}"])
    [line] = err.value.lines
    assert f"generate.preference: missing, but train.method is {method}" in line
    assert load_recipe(_recipe(tmp_path, preference=True), [f"train.method={method}"])
    assert load_recipe(_recipe(tmp_path, preference=False), ["train.method=sft"])
