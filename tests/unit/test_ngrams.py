"""The gate's and generate's contamination test: 13-gram overlap, plus short eval texts
(8-12 words) matched whole, the same rule ingest's decontamination applies."""

from __future__ import annotations

import json

from feinschliff.ngrams import contaminated, index_jsonl

LONG_Q = "Welcher Fluss fließt durch die Stadt Köln und mündet später in den Niederlanden ins Meer?"
SHORT_Q = "Wie heißt die Hauptstadt des Bundeslandes Nordrhein-Westfalen eigentlich genau?"


def _index(tmp_path):
    path = tmp_path / "task.jsonl"
    rows = [
        {"id": "q1", "question": LONG_Q, "choices": ["Rhein", "Elbe"], "answer_index": 0},
        {"id": "q2", "question": SHORT_Q, "answer": "Düsseldorf"},
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return index_jsonl([path])


def _row(text):
    return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]}


def test_long_and_short_eval_texts_are_found_inside_training_rows(tmp_path):
    index = _index(tmp_path)
    rows = [
        _row(f"Kurze Frage: {LONG_Q.lower()} Danke!"),
        _row(f"Bitte beantworten: {SHORT_Q}"),
        _row("Wie heißt die Hauptstadt von Bayern?"),  # shares words, not the whole short text
        _row("Düsseldorf Rhein Elbe"),  # answers and choices alone are no contamination
    ]
    assert contaminated(rows, index) == [0, 1]


def test_a_truncated_short_question_does_not_count(tmp_path):
    index = _index(tmp_path)
    truncated = " ".join(SHORT_Q.split()[:-2])
    assert contaminated([_row(truncated)], index) == []
