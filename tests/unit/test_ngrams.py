"""The contamination rule (13-gram overlap, plus short eval texts of 8-12 words matched whole),
and that ingest's decontamination, the gate's metric and generate's filter all apply it."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from feinschliff.ngrams import EvalIndex, contaminated, index_jsonl, row_text, word_hashes

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


def test_words_are_whitespace_tokens_without_surrounding_punctuation():
    assert word_hashes("„Köln“, z.B. E-Mail!") == word_hashes("köln Z.B e-mail")
    assert word_hashes("E-Mail") != word_hashes("E Mail")
    assert len(word_hashes("eins – zwei")) == 3  # a free-standing dash is an (empty) word
    with pytest.raises(ValueError, match="at least 3 words"):
        EvalIndex(2)


# --------------------------------------------------------------------------- one rule, 3 callers

# An eval set of its own, found the way the bundled ones are (FEINSCHLIFF_PROJECT_ROOT).
LONG = (
    "Welche Stadt an der Ostsee wurde im Mittelalter durch den Handel der Hanse reich und berühmt?"
)
SHORT = "Wie heißt der höchste Berg Österreichs, gemessen über dem Meer?"  # 11 words
HYPHENS = "Wann wurde Baden-Württemberg als Bundesland gegründet, bitte?"  # 7 words, 8 by \w+
META = "eins zwei drei vier fünf sechs sieben acht neun zehn"  # a metadata key's value
EVAL_ROWS = [
    {"id": "e1", "question": LONG, "choices": ["Lübeck", "München"], "answer_index": 0},
    {"id": "e2", "category": META, "question": SHORT, "answer": "Großglockner"},
    {"id": "e3", "question": HYPHENS, "answer": "1952"},
]


def _sft(user, answer, system=None, **extra):
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": msgs, "provenance": {"source": "test"}, **extra}


def _pref(prompt, chosen, rejected):
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "provenance": {"source": "test"},
    }


LONG_WORDS = LONG.split()
CASES = [  # (training row, contaminated?)
    (_sft(f"Quizfrage: „{LONG.upper()}“!!", "Lübeck."), True),  # case, quotes, umlauts
    (_sft("Eine Frage", f"Sie meinten wohl: {SHORT.lower()} Das ist der Großglockner."), True),
    (_sft("Eine Frage", "Sie meinten: " + " ".join(SHORT.split()[:-1])), False),  # truncated
    (_sft("Hallo", "Guten Tag, wie kann ich helfen?", system=f"Beispiel: {LONG}"), False),
    (_sft(" ".join(LONG_WORDS[:7]), "\n ".join(LONG_WORDS[7:13])), True),  # across messages
    (_sft("Lübeck oder München?", "Großglockner, 1952."), False),  # answers, choices
    (_sft(f"Zählen Sie: {META}", "Erledigt, das war einfach."), False),  # metadata keys
    (_sft(f"Frage: {HYPHENS}", "Das war im Jahr 1952."), False),  # 7 words: too short
    (_sft("Wie geht es?", "Gut, danke.", provenance={"note": LONG}), False),  # not training text
    (_pref("Eine Frage", "Keine Ahnung, leider.", f"Gegenfrage: {SHORT}"), True),
]


@pytest.fixture
def own_eval_set(tmp_path, monkeypatch):
    tasks = tmp_path / "root" / "evals" / "lm_eval_tasks"
    tasks.mkdir(parents=True)
    lines = [json.dumps(r, ensure_ascii=False) for r in EVAL_ROWS]
    (tasks / "own.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    (tasks / "own.yaml").write_text(
        "task: own\ndataset_kwargs:\n  data_files:\n    test: own.jsonl\n"
    )
    monkeypatch.setenv("FEINSCHLIFF_PROJECT_ROOT", str(tmp_path / "root"))
    return "own"


def test_ingest_the_gate_and_generate_flag_the_same_rows(own_eval_set, tmp_path):
    from feinschliff.evaluate.stage import contamination
    from feinschliff.generate.postprocess import filter_rows
    from feinschliff.generate.stage import _eval_index
    from feinschliff.ingest.decontam import Decontaminator, find_eval_sets
    from feinschliff.specs.generate import GenerateSpec

    rows = [row for row, _ in CASES]
    expected = [flag for _, flag in CASES]

    # ingest: the word hashes prepare_rows computes once per row (MinHash shares them)
    decon = Decontaminator(find_eval_sets([own_eval_set]), 13)
    ingest = [decon.contaminated_by_words(word_hashes(row_text(r))) is not None for r in rows]

    # the gate's metric, one training dataset per row
    gate = []
    for i, row in enumerate(rows):
        data = tmp_path / f"data-{i}"
        data.mkdir()
        name = "preference.jsonl" if "prompt" in row else "sft.jsonl"
        (data / name).write_text(json.dumps(row, ensure_ascii=False) + "\n", "utf-8")
        entry = contamination(data, [own_eval_set])
        assert entry["samples"] == 1 and entry["eval_files"] == ["evals/lm_eval_tasks/own.jsonl"]
        gate.append(entry["value"] == 1)

    # generate's filter, every other filter let through
    spec = GenerateSpec.model_validate(
        {
            "seeds": {"topics": "/x/themen.txt"},
            "teacher": {"kind": "openai", "base_url": "http://t/v1", "model": "m"},
            "num_instructions": 10,
            "filters": {"language": None, "min_answer_chars": 1, "dedup_against_feedback": False},
        }
    )
    drops: Counter[str] = Counter()
    kept = filter_rows(rows, spec, set(), _eval_index(), drops)
    generate = [all(k is not r for k in kept) for r in rows]

    assert ingest == expected
    assert gate == expected
    assert generate == expected
    assert drops == {"eval_contamination": sum(expected)}


def test_a_passage_repeated_across_eval_rows_is_indexed_once():
    passage = (
        "Der Kunde meldet seinen Zählerstand jeden Monat online über das Portal der Stadtwerke."
    )
    index = EvalIndex()
    for _ in range(50):
        index.add_row({"passage": passage, "question": "Wann?"}, "lesen")
    stored = sum(len(b) for b in index.anchored.values())
    assert stored == len(passage.split()) - index.n + 1
    assert index.contaminated_by({"messages": [{"role": "user", "content": passage}]}) == "lesen"


def test_the_gate_metric_reads_every_training_file(own_eval_set, tmp_path):
    """KTO data is trained on too: a quoted eval question there counts like anywhere else."""
    from feinschliff.evaluate.stage import contamination

    def kto(answer: str, label: bool) -> dict:
        return {
            "prompt": [{"role": "user", "content": "Eine Frage"}],
            "completion": [{"role": "assistant", "content": answer}],
            "label": label,
        }

    rows = [kto(f"Gegenfrage: {LONG}", False), kto("Gerne, das geht online.", True)]
    (tmp_path / "kto.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    (tmp_path / "sft.jsonl").write_text(json.dumps(CASES[5][0]) + "\n", "utf-8")
    entry = contamination(tmp_path, [own_eval_set])
    assert entry["samples"] == 3 and entry["value"] == 1
