"""Distiset rows -> training rows: drops counted by reason, filters, seeds, the mix."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from feinschliff.artifacts import DatasetRef, completed_hash, mark_complete
from feinschliff.generate.mix import merge_datasets, weighted
from feinschliff.generate.postprocess import (
    feedback_prompts,
    filter_rows,
    is_german,
    rows_from_distiset,
)
from feinschliff.generate.seeds import (
    SeedError,
    cut,
    pack_passages,
    paragraphs,
    plan_requests,
    read_seeds,
)
from feinschliff.ngrams import EvalIndex
from feinschliff.specs.generate import GenerateSpec, MixSpec, SeedsSpec

Q = "Wie melde ich meinen Zählerstand im Kundenportal?"
GOOD = "Gerne helfe ich Ihnen: Sie melden den Zählerstand im Kundenportal unter Verträge."
BAD = "I do not know, sorry."


def _spec(**kw) -> GenerateSpec:
    base = {
        "seeds": {"topics": "/x/themen.txt"},
        "teacher": {"kind": "openai", "base_url": "http://t/v1", "model": "m"},
        "num_instructions": 10,
        "preference": {"num_generations": 2},
    }
    return GenerateSpec.model_validate({**base, **kw})


def _pref_row(instruction=Q, gens=(GOOD, BAD), ratings=(5, 1)):
    row = {"seed_id": "s1", "instruction": instruction, "generations": list(gens)}
    row["ratings"] = list(ratings) if ratings is not None else None
    if ratings is None or None in ratings or None in gens:
        return {**row, "chosen": None, "rejected": None}
    hi = max(range(len(gens)), key=lambda i: ratings[i])
    lo = min(range(len(gens)), key=lambda i: ratings[i])
    user = [{"role": "user", "content": instruction}]
    return {
        **row,
        "chosen": user + [{"role": "assistant", "content": gens[hi]}],
        "rejected": user + [{"role": "assistant", "content": gens[lo]}],
        "chosen_rating": ratings[hi],
        "rejected_rating": ratings[lo],
    }


def test_preference_rows_drop_and_count_missing_answers_bad_ratings_and_ties():
    leaves = {
        "instructions_raw": [{"seed_id": "s1", "instructions": [Q, "zu kurz"]}],
        "preferences": [
            _pref_row(),
            _pref_row(gens=(GOOD, None)),
            _pref_row(ratings=(None, 3)),
            _pref_row(ratings=(3, 3)),
        ],
    }
    res = rows_from_distiset(leaves, _spec(), "teacher-m", "judge-m")
    assert res.drops["instructions"] == {"instruction_too_short": 1}
    assert res.drops["preference"] == {
        "answer_missing": 1,
        "rating_unparseable": 1,
        "rating_margin_too_small": 1,
    }
    assert res.drops["sft"] == {"answer_missing": 1}
    assert len(res.sft) == 3  # unrated and tied rows still give an SFT row
    [pair] = res.preference
    assert pair["prompt"] == [{"role": "user", "content": Q}]
    assert pair["chosen"] == [{"role": "assistant", "content": GOOD}]
    assert pair["rejected"] == [{"role": "assistant", "content": BAD}]
    assert pair["provenance"]["judge"] == "judge-m"
    assert res.sft[0]["messages"][-1]["content"] == GOOD  # the best-rated answer


def test_pair_whose_answers_are_the_same_text_is_dropped_and_counted():
    same = "  " + GOOD.upper().replace(" ", "   ") + "\n"  # differs in case and spaces only
    leaves = {
        "instructions_raw": [{"seed_id": "s1", "instructions": [Q]}],
        "preferences": [_pref_row(gens=(GOOD, same), ratings=(5, 2))],
    }
    res = rows_from_distiset(leaves, _spec(), "t", "j")
    assert res.preference == []
    assert res.drops["preference"] == {"chosen_equals_rejected": 1}
    assert [r["messages"][-1]["content"] for r in res.sft] == [GOOD]  # still a good SFT row


def test_sft_only_rows_come_from_the_answers_leaf():
    leaves = {
        "instructions_raw": [{"seed_id": "s1", "instructions": [Q, Q + " Bitte."]}],
        "answers": [
            {"seed_id": "s1", "instruction": Q, "generation": GOOD},
            {"seed_id": "s1", "instruction": Q + " Bitte.", "generation": None},
        ],
    }
    res = rows_from_distiset(leaves, _spec(preference=None), "t", "t")
    assert [r["messages"][0]["content"] for r in res.sft] == [Q]
    assert res.drops["sft"] == {"answer_missing": 1}
    assert res.selected_instructions == 2


@pytest.mark.parametrize(
    ("text", "german"),
    [
        (GOOD, True),
        ("Ich möchte meinen Vertrag kündigen, wie geht das bitte?", True),
        ("How do I report my meter reading in the customer portal?", False),
        ("The Zählerstand is reported in the portal, you can do it online.", False),
        ("Zählerstand", False),
    ],
)
def test_is_german(text, german):
    assert is_german(text) is german


def test_language_is_judged_per_text_so_a_german_question_cannot_carry_an_english_answer():
    spec = _spec(filters={"min_answer_chars": 20})
    long_q = (
        "Ich habe eine Frage: wie kann ich bei den Stadtwerken meinen Zählerstand melden, "
        "wenn ich nicht zu Hause bin und es sehr eilig ist?"
    )
    english = "Please use the online portal for that."

    def sft(q, a):
        return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}

    def pair(chosen, rejected):
        return {
            "prompt": [{"role": "user", "content": long_q}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }

    short_german = "Online im Kundenportal erledigen."  # too few words to tell on its own
    rows = [
        sft(long_q, english),
        pair(english, GOOD),  # the chosen answer (the training target) is English
        sft("How can I report it? " * 2, GOOD),  # English question, German answer
        sft(Q, short_german),  # kept: nothing English, German together
        pair(GOOD, GOOD + " Danke."),
        # kept: preferring German over English is a signal worth keeping
        pair(GOOD + " Viele Grüße von den Stadtwerken.", english),
    ]
    drops: Counter[str] = Counter()
    kept = filter_rows(rows, spec, feedback_prompts=set(), eval_index=None, drops=drops)
    assert kept == [rows[3], rows[4], rows[5]]
    assert drops == {"not_german": 3}


def test_filters_count_length_language_duplicates_feedback_and_contamination():
    spec = _spec(filters={"min_answer_chars": 20, "max_answer_chars": 200})

    def sft(q, a):
        return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}

    leaked = "Der Abschlag ist eine monatliche Vorauszahlung auf die Jahresrechnung und wird im Kundenportal angepasst"
    rows = [
        sft(Q, GOOD),
        sft(Q, GOOD),  # duplicate
        sft(Q, "Ja."),  # too short
        sft(Q, GOOD * 5),  # too long
        sft("How do I pay?", "You pay with your bank account, it is easy."),  # not German
        sft("Was ist ein Abschlag bei den Stadtwerken?", GOOD),  # also a feedback prompt
        sft("Was ist der Abschlag?", "Gerne: " + leaked),  # in an eval set
    ]
    drops: Counter[str] = Counter()
    index = EvalIndex()
    index.add(leaked)
    kept = filter_rows(
        rows,
        spec,
        feedback_prompts={"was ist ein abschlag bei den stadtwerken?"},
        eval_index=index,
        drops=drops,
    )
    assert kept == [rows[0]]
    assert drops == {
        "duplicate": 1,
        "answer_too_short": 1,
        "answer_too_long": 1,
        "not_german": 1,
        "duplicate_of_feedback": 1,
        "eval_contamination": 1,
    }


def test_feedback_prompts_include_the_heldout_split(tmp_path):
    (tmp_path / "heldout").mkdir()
    row = {
        "prompt": [{"role": "user", "content": "  Wie  KÜNDIGE ich?"}],
        "chosen": [],
        "rejected": [],
    }
    (tmp_path / "heldout" / "preference.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "sft.jsonl").write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "Hallo"},
                    {"role": "assistant", "content": "x"},
                ]
            }
        )
        + "\n"
    )
    assert feedback_prompts(tmp_path) == {"wie kündige ich?", "hallo"}


# --------------------------------------------------------------------------- seeds


def test_seeds_from_topics_and_every_document_kind(tmp_path):
    topics = tmp_path / "themen.txt"
    topics.write_text("# Kommentar\nTarifwechsel\n\nZählerstand melden\n", encoding="utf-8")
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# Titel\n\nErster Absatz.\n\nZweiter Absatz.", encoding="utf-8")
    (docs / "sub" / "b.jsonl").write_text(
        '{"text": "Aus JSONL."}\n"Nur ein String."\n\n', encoding="utf-8"
    )
    (docs / "ignored.pdf").write_bytes(b"%PDF")
    seeds = read_seeds(SeedsSpec(topics=str(topics), documents=str(docs), pii="off"))
    assert seeds.items == [
        ("themen.txt:2", "Tarifwechsel"),
        ("themen.txt:4", "Zählerstand melden"),
        ("a.md#1", "# Titel\n\nErster Absatz.\n\nZweiter Absatz."),
        ("sub/b.jsonl#1", "Aus JSONL."),
        ("sub/b.jsonl#2", "Nur ein String."),
    ]
    assert set(seeds.inputs) == {str(topics), str(docs / "a.md"), str(docs / "sub" / "b.jsonl")}


def test_bad_seeds_fail_with_the_place(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "x.jsonl").write_text("{broken\n")
    with pytest.raises(SeedError, match=r"x.jsonl:1: invalid JSON"):
        read_seeds(SeedsSpec(documents=str(docs), pii="off"))
    with pytest.raises(SeedError, match="no seeds"):
        (docs / "x.jsonl").write_text("\n")
        read_seeds(SeedsSpec(documents=str(docs), pii="off"))
    with pytest.raises(ValueError, match="topics"):
        SeedsSpec()


def test_passages_are_packed_up_to_the_limit():
    text = "\n\n".join(["a" * 90, "b" * 90, "c" * 250])
    assert [len(p) for p in pack_passages(paragraphs(text), 200)] == [182, 200, 50]


def test_a_cut_never_splits_a_placeholder():
    text = "a" * 195 + "<IBAN_CODE>" + "b" * 10
    assert cut(text, 200) == ["a" * 195, "<IBAN_CODE>" + "b" * 10]
    assert cut("a" * 189 + "<IBAN_CODE>" + "b", 200) == ["a" * 189 + "<IBAN_CODE>", "b"]


IBAN = "DE89370400440532013000"


def test_long_paragraphs_and_values_are_scrubbed_before_they_are_cut(tmp_path):
    """The real scrubber (Presidio), which finds an IBAN only when it is whole."""
    docs = tmp_path / "docs"
    docs.mkdir()
    filler = ("Der Kundenservice hilft gern weiter. " * 40)[:1190]
    (docs / "a.txt").write_text(filler + f" Konto {IBAN} bitte.", encoding="utf-8")
    (docs / "b.jsonl").write_text(json.dumps({"text": filler[:1180] + f" Konto {IBAN}"}) + "\n")
    seeds = read_seeds(SeedsSpec(documents=str(docs), passage_chars=1200))
    sent = "".join(text for _, text in seeds.items)
    assert "DE89" not in sent and "0532013000" not in sent  # no half of the IBAN either
    assert sent.count("<IBAN_CODE>") == 2
    assert seeds.pii_findings == {"IBAN_CODE": 2}
    assert all(len(text) <= 1200 for _, text in seeds.items)


def test_plan_spreads_over_seeds_and_marks_repeat_rounds():
    seeds = [(f"s{i}", f"Thema {i}") for i in range(4)]
    assert [s for s, _ in plan_requests(seeds, 4, 2)] == ["s0", "s2"]
    plan = plan_requests(seeds, 30, 5)
    assert [s for s, _ in plan] == ["s0", "s1", "s2", "s3", "s0@2", "s1@2"]
    assert plan[4][1] == "Thema 0\n\n(Variante 2)"


# --------------------------------------------------------------------------- mix


def test_weights_scale_rows_deterministically():
    rows = [{"i": i} for i in range(200)]
    assert weighted(rows, 0.0, "s") == []
    assert weighted(rows, 1.0, "s") == rows
    assert len(weighted(rows, 2.0, "s")) == 400
    half = weighted(rows, 0.5, "s")
    assert len(half) == 100 and half == weighted(rows, 0.5, "s")
    assert half != weighted(rows, 0.5, "other salt")
    for n, weight, expected in ((10, 0.5, 5), (100, 0.5, 50), (10, 0.3, 3), (10, 1.5, 15)):
        assert len(weighted(rows[:n], weight, "s")) == expected, (n, weight)


def _dataset(root: Path, sft: list[dict], pref: list[dict], heldout: bool = False) -> DatasetRef:
    root.mkdir(parents=True)
    for name, rows in (("sft.jsonl", sft), ("preference.jsonl", pref)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    if heldout:
        (root / "heldout").mkdir()
        (root / "heldout" / "sft.jsonl").write_text(json.dumps(sft[0]) + "\n")
    return DatasetRef(path=str(root), sha256=mark_complete(root))


def test_merge_mixes_weighted_sources_and_keeps_feedback_heldout(tmp_path):
    fb = _dataset(
        tmp_path / "fb", [{"messages": "fb1"}, {"messages": "fb2"}], [{"p": 1}], heldout=True
    )
    gen = _dataset(tmp_path / "gen", [{"messages": "gen1"}], [{"p": 2}, {"p": 3}])
    out = tmp_path / "mix"
    ref = merge_datasets(fb, gen, MixSpec(feedback=2.0, synthetic=1.0), out)
    sft = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    assert [r["messages"] for r in sft] == ["fb1", "fb1", "fb2", "fb2", "gen1"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["preference.jsonl"] == {"feedback": 1, "synthetic": 2, "mixed": 4}
    assert (out / "heldout" / "sft.jsonl").exists()
    assert completed_hash(out) == ref.sha256
    assert merge_datasets(fb, gen, MixSpec(feedback=2.0, synthetic=1.0), out) == ref


def test_feedback_prompts_include_kto_rows_training_and_heldout(tmp_path):
    """kto.jsonl is feedback too: a generated question equal to a thumbs-rated prompt leaked
    into training (or, from heldout/, into the evaluation)."""
    (tmp_path / "heldout").mkdir()

    def kto(question: str) -> str:
        row = {
            "prompt": [{"role": "user", "content": question}],
            "completion": [{"role": "assistant", "content": "x"}],
            "label": True,
        }
        return json.dumps(row) + "\n"

    (tmp_path / "kto.jsonl").write_text(kto("Wie melde ich  den Zählerstand?"))
    (tmp_path / "heldout" / "kto.jsonl").write_text(kto("Was kostet Ökostrom?"))
    assert feedback_prompts(tmp_path) == {"wie melde ich den zählerstand?", "was kostet ökostrom?"}
