"""The recipe's `feedback.decontamination.ngram` is the n of ingest, the gate's contamination
metric and generate's filter alike, and part of the evaluate and generate cache keys."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from feinschliff.artifacts import AdapterRef
from feinschliff.ingest.decontam import Decontaminator, find_eval_sets
from feinschliff.ngrams import row_text, word_hashes
from feinschliff.recipe_loader import load_recipe

ROOT = Path(__file__).resolve().parents[2]
EVAL_TEXT = " ".join(f"wort{i}" for i in range(30))  # a 30-word eval question
# a training row quoting 15 consecutive words of it: a 13-gram overlap, no 20-gram one
ROW = {
    "messages": [
        {"role": "user", "content": "Frage: " + " ".join(f"wort{i}" for i in range(5, 20))},
        {"role": "assistant", "content": "Antwort"},
    ]
}


@pytest.fixture
def own_eval_set(tmp_path, monkeypatch):
    tasks = tmp_path / "root" / "evals" / "lm_eval_tasks"
    tasks.mkdir(parents=True)
    (tasks / "own.jsonl").write_text(json.dumps({"question": EVAL_TEXT}) + "\n", "utf-8")
    (tasks / "own.yaml").write_text(
        "task: own\ndataset_kwargs:\n  data_files:\n    test: own.jsonl\n"
    )
    monkeypatch.setenv("FEINSCHLIFF_PROJECT_ROOT", str(tmp_path / "root"))
    return "own"


def _ingest_drops(name: str, ngram: int) -> bool:
    decon = Decontaminator(find_eval_sets([name]), ngram)
    return decon.contaminated_by_words(word_hashes(row_text(ROW))) is not None


def test_the_gate_metric_counts_with_the_recipes_n(own_eval_set, tmp_path):
    from feinschliff.evaluate.stage import contamination

    data = tmp_path / "data"
    data.mkdir()
    (data / "sft.jsonl").write_text(json.dumps(ROW) + "\n", "utf-8")
    for ngram, flagged in ((13, True), (20, False)):
        assert _ingest_drops(own_eval_set, ngram) is flagged
        entry = contamination(data, [own_eval_set], ngram)
        assert entry["samples"] == 1 and entry["value"] == float(flagged), ngram
    assert contamination(data, [own_eval_set])["value"] == 1.0  # default: 13, as ingest's


def test_the_gate_names_the_recipes_n(own_eval_set, tmp_path):
    """The rule's detail said "a 13-gram" whatever n the recipe used."""
    from feinschliff.evaluate.stage import contamination
    from feinschliff.gate import decide_promotion
    from feinschliff.recipe import GateSpec

    data = tmp_path / "data"
    data.mkdir()
    (data / "sft.jsonl").write_text(json.dumps(ROW) + "\n", "utf-8")
    report = {
        "metrics": {"candidate": {"contamination/overlaps": contamination(data, ["own"], 10)}}
    }
    decision = decide_promotion(
        report, GateSpec.model_validate({"rules": [{"rule": "contamination"}]})
    )
    assert not decision.promote
    assert "a 10-gram or a whole short item" in decision.results[0].detail


def test_generate_filters_with_the_recipes_n(own_eval_set):
    from feinschliff.generate.postprocess import filter_rows
    from feinschliff.generate.stage import _eval_index
    from feinschliff.specs.generate import GenerateSpec

    spec = GenerateSpec.model_validate(
        {
            "seeds": {"topics": "/x/themen.txt"},
            "teacher": {"kind": "openai", "base_url": "http://t/v1", "model": "m"},
            "num_instructions": 10,
            "filters": {"language": None, "min_answer_chars": 1, "dedup_against_feedback": False},
        }
    )
    for ngram, flagged in ((13, True), (20, False)):
        drops: Counter[str] = Counter()
        kept = filter_rows([ROW], spec, set(), _eval_index(ngram), drops)
        assert (not kept) is flagged and drops["eval_contamination"] == int(flagged), ngram


def test_generate_cache_key_follows_the_n(tmp_path):
    from feinschliff.generate.stage import cache_key
    from feinschliff.specs.generate import GenerateSpec

    (tmp_path / "themen.txt").write_text("Tarifwechsel\n", encoding="utf-8")
    spec = GenerateSpec.model_validate(
        {
            "seeds": {"topics": str(tmp_path / "themen.txt")},
            "teacher": {"kind": "openai", "base_url": "http://t/v1", "model": "m"},
            "num_instructions": 4,
        }
    )
    key = cache_key(spec, None, ngram=13)
    assert cache_key(spec, None) == key  # 13 is the default, as in the recipe
    assert cache_key(spec, None, ngram=20) != key
    # without the decontamination filter the n does not matter
    off = spec.model_copy(
        update={"filters": spec.filters.model_copy(update={"decontaminate": False})}
    )
    assert cache_key(off, None, ngram=13) == cache_key(off, None, ngram=20)


def test_evaluate_cache_key_follows_the_n(tmp_path):
    """run_evaluate reuses a finished report only under ``stage.cache_key`` of its inputs."""
    from feinschliff.evaluate import stage

    adapter = AdapterRef(path=str(tmp_path / "adapter"), sha256="a" * 64)
    demo = ROOT / "recipes" / "demo-de.yaml"
    keys = [
        stage.cache_key(load_recipe(demo, overrides), adapter)
        for overrides in (
            (),
            ("feedback.decontamination.ngram=13",),
            ("feedback.decontamination.ngram=20",),
        )
    ]
    assert keys[0] == keys[1] != keys[2]
