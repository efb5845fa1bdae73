"""The dataset part of a registry version's lineage, for feedback-only data and for a mix of
feedback and synthetic rows (a recipe with a `generate` section)."""

from __future__ import annotations

import json

from feinschliff.artifacts import DatasetRef
from feinschliff.pipeline import dataset_lineage

SOURCE = {"kind": "langfuse", "path": "data/samples/langfuse", "inputs": ["abc"], "rows": 3}


def _write(dir_, manifest):
    dir_.mkdir()
    (dir_ / "manifest.json").write_text(json.dumps(manifest))
    return DatasetRef(path=str(dir_), sha256="d" * 64)


def test_feedback_data_names_its_sources(tmp_path):
    ref = _write(
        tmp_path / "ingest",
        {"counts": {"sft": 3}, "sha256": {"sft.jsonl": "a"}, "sources": [SOURCE]},
    )
    got = dataset_lineage(ref)
    assert got["sources"] == [{k: SOURCE[k] for k in ("kind", "path", "inputs")}]
    assert "mix" not in got and got["sha256"] == "d" * 64


def test_a_mix_names_its_parts_and_the_feedback_sources(tmp_path):
    feedback = _write(
        tmp_path / "ingest",
        {"counts": {"sft": 3}, "sha256": {"sft.jsonl": "a"}, "sources": [SOURCE]},
    )
    generated = DatasetRef(path=str(tmp_path / "generate"), sha256="e" * 64)
    mix = _write(
        tmp_path / "mixed",
        {
            "stage": "mix",
            "feedback": feedback.model_dump(),
            "generated": generated.model_dump(),
            "weights": {"feedback": 1.0, "synthetic": 0.5},
            "counts": {"sft.jsonl": {"feedback": 3, "synthetic": 4, "mixed": 5}},
            "sha256": {"sft.jsonl": "b"},
        },
    )
    got = dataset_lineage(mix)
    assert got["sources"][0]["kind"] == "langfuse"
    assert got["mix"]["generated"]["sha256"] == "e" * 64
    assert got["counts"]["sft.jsonl"]["mixed"] == 5
