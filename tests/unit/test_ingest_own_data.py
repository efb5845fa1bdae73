"""A team's own curated data goes through ingest as the README's "Your own data" shows: SFT
rows as Langfuse dataset items, preference and KTO rows as trace-export rows with a thumbs
column. Rows in TRL's own shapes are refused with a pointer there (it said only "unknown row")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feinschliff.ingest import run_ingest
from feinschliff.ingest.stage import InvalidSource
from feinschliff.recipe import FeedbackSpec

SYSTEM = {"role": "system", "content": "Du bist der Kundenservice der Stadtwerke."}
ASK = {"role": "user", "content": "Wie melde ich meinen Zählerstand für Strom und Gas?"}


def _spec(path: Path) -> FeedbackSpec:
    return FeedbackSpec.model_validate(
        {
            "sources": [{"kind": "langfuse", "path": str(path)}],
            "pii": {"mode": "off"},
            "heldout_fraction": 0,
        }
    )


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "row",
    [
        {"messages": [ASK, {"role": "assistant", "content": "Im Kundenportal."}]},
        {"prompt": [ASK], "chosen": [{"role": "assistant", "content": "a"}], "rejected": []},
        {"prompt": [ASK], "completion": [{"role": "assistant", "content": "a"}], "label": True},
    ],
)
def test_training_rows_in_trls_shape_point_to_the_own_data_section(tmp_path, row):
    own = _write(tmp_path / "own.jsonl", [row])
    with pytest.raises(InvalidSource, match="training rows in TRL's format") as refused:
        run_ingest(_spec(own), tmp_path / "out")
    assert "README: Your own data" in str(refused.value)


def test_the_documented_shapes_become_sft_preference_and_kto_rows(tmp_path):
    answer = "Sie melden ihn im Kundenportal unter Zählerstände oder telefonisch bei uns."
    items = _write(
        tmp_path / "sft.jsonl",
        [
            {
                "id": "faq-1",
                "datasetId": "own",
                "input": {"messages": [SYSTEM, ASK]},
                "expectedOutput": answer,
            }
        ],
    )
    question = [{"role": "user", "content": "Kann ich meinen Abschlag online ändern, bitte?"}]
    good = "Ja, im Kundenportal unter Abschlag können Sie den Betrag jederzeit anpassen."
    votes = _write(
        tmp_path / "votes.jsonl",
        [
            {"id": "p1-good", "timestamp": "2026-11-01T10:00:00Z", "input": question,
             "output": good, "user-feedback": [1]},
            {"id": "p1-bad", "timestamp": "2026-11-01T10:05:00Z", "input": question,
             "output": "Nein.", "user-feedback": [0]},
        ],
    )  # fmt: skip
    run_ingest(_spec(items), tmp_path / "sft")
    (sft,) = _rows(tmp_path / "sft" / "sft.jsonl")
    assert sft["messages"] == [SYSTEM, ASK, {"role": "assistant", "content": answer}]

    run_ingest(_spec(votes), tmp_path / "votes")
    (pair,) = _rows(tmp_path / "votes" / "preference.jsonl")
    assert pair["prompt"] == question
    assert (pair["chosen"][-1]["content"], pair["rejected"][-1]["content"]) == (good, "Nein.")
    labels = sorted(r["label"] for r in _rows(tmp_path / "votes" / "kto.jsonl"))
    assert labels == [False, True]
