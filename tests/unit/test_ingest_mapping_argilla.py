"""Argilla exports of a team's own layout: ``sources[i].mapping`` (prompt, answers,
corrections, prompt_template), the notes on guessed defaults, a bad response quarantined
alone, and flat files recognised by content whatever their names.

The settings and records are written in the shapes the argilla 2.8 SDK writes (FACTS 10.1.1
to 10.1.3): ``Settings.to_json()`` fields/questions, nested ``to_disk`` records, flat
``to_list(flatten=True)`` rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from feinschliff.ingest import run_ingest
from feinschliff.ingest.detect import UnknownExport, open_export
from feinschliff.ingest.records import ReadLog
from feinschliff.ingest.scratch import Scratch
from feinschliff.ingest.stage import InvalidSource
from feinschliff.recipe import FeedbackSpec
from feinschliff.specs.feedback import DerivationRules, SourceMapping

ANNA, BEN = "6f8b4c2e-0000-0000-0000-000000000001", "6f8b4c2e-0000-0000-0000-000000000002"
Q_FRAGE = "Wie lange ist die Kündigungsfrist für meinen Stromvertrag?"
CONTEXT = "AGB Paragraph 7: Die Kündigungsfrist beträgt vier Wochen zum Monatsende."
ANSWER = "Die Kündigungsfrist beträgt vier Wochen zum Monatsende, steht in den AGB."


def _field(name: str) -> dict[str, Any]:
    return {"name": name, "settings": {"type": "text", "use_markdown": False}, "type": "text"}


def _question(name: str, kind: str, options: list[str] | None = None) -> dict[str, Any]:
    settings: dict[str, Any] = {"type": kind}
    if kind == "rating":
        settings["options"] = [{"value": v} for v in range(1, 8)]
    if options:
        settings["options"] = [{"text": o, "value": o} for o in options]
    return {"name": name, "settings": settings, "type": kind, "required": False}


def to_disk(folder: Path, fields: list[str], questions: list[dict], records: list[dict]) -> Path:
    """A ``Dataset.to_disk`` folder: .argilla/settings.json + records.json (nested)."""
    (folder / ".argilla").mkdir(parents=True)
    settings = {"guidelines": None, "fields": [_field(f) for f in fields], "questions": questions}
    (folder / ".argilla" / "settings.json").write_text(json.dumps(settings))
    (folder / "records.json").write_text(json.dumps(records, ensure_ascii=False))
    return folder


def nested(rid: str, fields: dict[str, str], responses: dict[str, list]) -> dict[str, Any]:
    return {
        "id": rid,
        "fields": fields,
        "metadata": {},
        "responses": responses,
        "status": "completed",
    }


def flat(rid: str, fields: dict[str, Any], responses: dict[str, list[tuple[str, Any]]]) -> dict:
    """A ``to_list(flatten=True)`` row: ``responses`` maps question -> [(user, value)]."""
    row: dict[str, Any] = {"id": rid, "status": "completed", "_server_id": None, **fields}
    for q, given in responses.items():
        row[f"{q}.responses"] = [v for _, v in given] or None
        row[f"{q}.responses.users"] = [u for u, _ in given] or None
        row[f"{q}.responses.status"] = ["submitted"] * len(given) or None
    return row


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def ingest(tmp_path: Path, path: Path, mapping: dict | None = None, **kw: Any) -> Path:
    source: dict[str, Any] = {"kind": "argilla", "path": str(path)}
    if mapping is not None:
        source["mapping"] = mapping
    spec = FeedbackSpec.model_validate(
        {"sources": [source], "pii": {"mode": "off"}, "heldout_fraction": 0.0, **kw}
    )
    out = tmp_path / "out"
    run_ingest(spec, out)
    return out


def rows(out: Path, name: str) -> list[dict]:
    text = (out / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def source_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["sources"][0]


# --------------------------------------------------------------------------- A1 RAG fields

RAG_FIELDS = ["frage", "kontext", "antwort"]
RAG_QUESTIONS = [_question("qualitaet", "rating")]


def rag(tmp_path: Path, extra: list[dict] | None = None) -> Path:
    rated = {"qualitaet": [{"value": 7, "user_id": ANNA}, {"value": 6, "user_id": BEN}]}
    record = nested("g1", {"frage": Q_FRAGE, "kontext": CONTEXT, "antwort": ANSWER}, rated)
    return to_disk(tmp_path / "rag", RAG_FIELDS, RAG_QUESTIONS, [record, *(extra or [])])


def test_by_default_a_context_field_is_an_answer_and_the_manifest_says_which_was_rated(tmp_path):
    out = ingest(tmp_path, rag(tmp_path))
    (row,) = rows(out, "sft.jsonl")
    assert row["messages"][-1]["content"] == CONTEXT  # the default, as before
    notes = [n for n in source_of(out)["notes"] if "mapping.answers" in n]
    assert len(notes) == 1 and "'kontext'" in notes[0] and "kontext, antwort" in notes[0]


def test_mapping_answers_and_prompt_template_build_the_rag_prompt(tmp_path):
    mapping = {"answers": ["antwort"], "prompt_template": "{kontext}\n\nFrage: {frage}"}
    out = ingest(tmp_path, rag(tmp_path), mapping)
    (row,) = rows(out, "sft.jsonl")
    assert row["messages"] == [
        {"role": "user", "content": f"{CONTEXT}\n\nFrage: {Q_FRAGE}"},
        {"role": "assistant", "content": ANSWER},
    ]
    assert not [n for n in source_of(out)["notes"] if "mapping.answers" in n]


def test_fields_the_template_uses_are_no_answers_by_default(tmp_path):
    out = ingest(tmp_path, rag(tmp_path), {"prompt_template": "{kontext}\n\nFrage: {frage}"})
    (row,) = rows(out, "sft.jsonl")
    assert row["messages"][-1]["content"] == ANSWER


def test_a_record_lacking_a_template_field_is_quarantined_with_the_field_named(tmp_path):
    lacking = nested("g2", {"frage": Q_FRAGE, "antwort": ANSWER}, {})
    out = ingest(
        tmp_path,
        rag(tmp_path, [lacking]),
        {"answers": ["antwort"], "prompt_template": "{kontext}\n\nFrage: {frage}"},
        max_quarantine_fraction=0.5,
    )
    (entry,) = rows(out, "quarantine.jsonl")
    assert entry["reason"] == "record lacks a field that mapping.prompt_template uses"
    assert entry["detail"] == "'kontext'" and entry["raw"]["id"] == "g2"


@pytest.mark.parametrize(
    ("mapping", "key", "name"),
    [
        ({"answers": ["antwort_neu"]}, "mapping.answers", "antwort_neu"),
        ({"prompt": "question"}, "mapping.prompt", "question"),
        ({"prompt_template": "{passage} {frage}"}, "mapping.prompt_template", "passage"),
    ],
)
def test_a_mapping_naming_a_missing_field_fails_the_stage_naming_the_fields(
    tmp_path, mapping, key, name
):
    with pytest.raises(InvalidSource) as err:
        ingest(tmp_path, rag(tmp_path), mapping)
    message = str(err.value)
    assert "\n" not in message and key in message and repr(name) in message
    assert "frage, kontext, antwort" in message


def test_a_mapping_naming_a_missing_correction_question_fails_before_reading(tmp_path):
    src = rag(tmp_path)
    mapping = SourceMapping(corrections=["korrektur"])
    with Scratch() as scratch, pytest.raises(UnknownExport, match=r"mapping\.corrections.*qual"):
        open_export("argilla", src, ReadLog(), DerivationRules(), scratch, mapping=mapping)
    with Scratch() as scratch, pytest.raises(UnknownExport, match="a rating question"):
        open_export(
            "argilla",
            src,
            ReadLog(),
            DerivationRules(),
            scratch,
            mapping=SourceMapping(corrections=["qualitaet"]),
        )


# --------------------------------------------------------------------------- A2 comments

TWO_TEXTS = [
    _question("qualitaet", "rating"),
    _question("korrektur", "text"),
    _question("kommentar", "text"),
]
GOOD = "Notieren Sie alle schwarzen Ziffern vor dem Komma, die roten brauchen wir nicht."
COMMENT = "Etwas knapp, aber inhaltlich korrekt."


def commented(tmp_path: Path) -> Path:
    responses = {
        "qualitaet": [{"value": 6, "user_id": ANNA}, {"value": 7, "user_id": BEN}],
        "kommentar": [{"value": COMMENT, "user_id": ANNA}],
    }
    record = nested("r04", {"prompt": "Wie lese ich den Gaszähler ab?", "antwort": GOOD}, responses)
    return to_disk(tmp_path / "todisk", ["prompt", "antwort"], TWO_TEXTS, [record])


def test_by_default_every_text_question_corrects_and_the_manifest_says_so(tmp_path):
    out = ingest(tmp_path, commented(tmp_path))
    assert rows(out, "sft.jsonl")[0]["messages"][-1]["content"] == COMMENT  # the default
    notes = [n for n in source_of(out)["notes"] if "mapping.corrections" in n]
    assert len(notes) == 1 and "korrektur, kommentar" in notes[0]


def test_mapping_corrections_leaves_comments_out_and_counts_them(tmp_path):
    out = ingest(tmp_path, commented(tmp_path), {"corrections": ["korrektur"]})
    (row,) = rows(out, "sft.jsonl")
    assert row["messages"][-1]["content"] == GOOD and row["provenance"]["rule"] == "accepted"
    assert rows(out, "preference.jsonl") == []
    source = source_of(out)
    assert source["skipped"]["argilla_text_response_not_correction"] == 1
    assert not [n for n in source["notes"] if "mapping.corrections" in n]


# --------------------------------------------------------------------------- A3 one response


def test_a_ranking_of_an_empty_answer_field_is_quarantined_alone(tmp_path):
    questions = [_question("korrektur", "text"), _question("reihenfolge", "ranking", ["a", "b"])]
    fixed = "Ja, bei einem Umzug können Sie mit sechs Wochen Frist kündigen."
    responses = {
        "korrektur": [{"value": fixed, "user_id": ANNA}],
        "reihenfolge": [{"value": ["b", "a"], "user_id": BEN}],
    }
    record = nested(
        "r03", {"prompt": "Kann ich vorzeitig kündigen?", "a": "Nein, niemals."}, responses
    )
    src = to_disk(tmp_path / "rank", ["prompt", "a", "b"], questions, [record])

    out = ingest(tmp_path, src, max_quarantine_fraction=0.5)

    assert rows(out, "sft.jsonl")[0]["messages"][-1]["content"] == fixed  # the correction counts
    (entry,) = rows(out, "quarantine.jsonl")
    assert entry["reason"] == "ranking does not rank the answer fields"
    assert entry["source"] == "argilla" and entry["location"].startswith(str(src))
    assert entry["raw"] == {
        "id": "r03",
        "question": "reihenfolge",
        "response": {"value": ["b", "a"], "user_id": BEN},
    }
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"][0]["records"] == 1 and manifest["sources"][0]["quarantined"] == 1
    assert manifest["drops"]["quarantined: ranking does not rank the answer fields"] == 1


# --------------------------------------------------------------------------- A4 guessed types

FLAT_QS = ("korrektur", "qualitaet")


def renamed_rows() -> list[dict]:
    """A flat export whose first correction is one word: it looks like a label."""
    return [
        flat(
            "r07",
            {"prompt": "In welcher Stadt ist Ihr Kundencenter?", "response_a": "In Nürnberg."},
            {"korrektur": [(ANNA, "München.")], "qualitaet": []},
        ),
        flat(
            "r03",
            {"prompt": "Kann ich vorzeitig kündigen?", "response_a": "Nein, niemals."},
            {"korrektur": [(ANNA, "Ja, bei einem Umzug mit sechs Wochen Frist.")], "qualitaet": []},
        ),
    ]


def test_without_settings_the_guessed_question_types_are_noted(tmp_path):
    rated = flat(
        "r01",
        {"prompt": "Wann wird abgebucht?", "response_a": "Am fünfzehnten des Monats."},
        {"korrektur": [], "qualitaet": [(ANNA, 7)]},
    )
    src = write_jsonl(tmp_path / "flat" / "export.jsonl", [*renamed_rows(), rated])
    out = ingest(tmp_path, src, max_quarantine_fraction=0.5)
    (note,) = [n for n in source_of(out)["notes"] if "guessed" in n]
    assert "korrektur=label_selection" in note and "mapping.corrections" in note
    assert ".argilla/settings.json" in note


def test_mapping_corrections_makes_a_column_a_text_question(tmp_path):
    src = write_jsonl(tmp_path / "flat" / "export.jsonl", renamed_rows())
    out = ingest(tmp_path, src, {"corrections": ["korrektur"]})
    targets = sorted(r["messages"][-1]["content"] for r in rows(out, "sft.jsonl"))
    assert targets == ["Ja, bei einem Umzug mit sechs Wochen Frist.", "München."]
    assert not [n for n in source_of(out)["notes"] if "korrektur=" in n]


def test_a_flat_export_without_settings_checks_the_mapping_against_its_columns(tmp_path):
    src = write_jsonl(tmp_path / "flat" / "export.jsonl", renamed_rows())
    with pytest.raises(InvalidSource, match=r"mapping\.corrections names 'kommentar'"):
        ingest(tmp_path, src, {"corrections": ["kommentar"]})


def test_a_mapped_prompt_reads_a_flat_export_without_a_prompt_column(tmp_path):
    row = flat(
        "g1",
        {"frage": Q_FRAGE, "antwort": ANSWER},
        {"qualitaet": [(ANNA, 7), (BEN, 6)]},
    )
    src = write_jsonl(tmp_path / "flat" / "export.jsonl", [row])
    out = ingest(tmp_path, src, {"prompt": "frage", "answers": ["antwort"]})
    (sft,) = rows(out, "sft.jsonl")
    assert sft["messages"] == [
        {"role": "user", "content": Q_FRAGE},
        {"role": "assistant", "content": ANSWER},
    ]


# --------------------------------------------------------------------------- A5 by content


def flat_rows() -> list[dict]:
    return [
        flat(
            f"f{i}",
            {"prompt": f"Frage Nummer {i} zum Tarif?", "response_a": f"Antwort {i} zum Tarif."},
            {"qualitaet": [(ANNA, 7)], "korrektur": []},
        )
        for i in range(3)
    ]


def flat_with_settings(folder: Path, name: str) -> Path:
    (folder / ".argilla").mkdir(parents=True)
    settings = {
        "fields": [_field("prompt"), _field("response_a")],
        "questions": [_question("qualitaet", "rating"), _question("korrektur", "text")],
    }
    (folder / ".argilla" / "settings.json").write_text(json.dumps(settings))
    if name.endswith(".json"):
        (folder / name).write_text(json.dumps(flat_rows()))
    else:
        write_jsonl(folder / name, flat_rows())
    return folder


@pytest.mark.parametrize("name", ["records.jsonl", "records.json", "export.jsonl"])
def test_a_folder_of_flat_rows_with_settings_is_read_flat_whatever_the_names(tmp_path, name):
    out = ingest(tmp_path, flat_with_settings(tmp_path / "export", name))
    source = source_of(out)
    assert source["format"] == "argilla-2-flat" and source["records"] == 3
    assert source["quarantined"] == 0 and len(rows(out, "sft.jsonl")) == 3


def test_a_folder_holding_only_a_flat_jsonl_is_read(tmp_path):
    write_jsonl(tmp_path / "export" / "feedback-de-flat.jsonl", flat_rows())
    out = ingest(tmp_path, tmp_path / "export")
    source = source_of(out)
    assert source["format"] == "argilla-2-flat" and source["records"] == 3
    assert len(rows(out, "sft.jsonl")) == 3
