"""Review fixes: preference aggregation as documented, whitespace-blind exact dedup with a
frozen held-out split, and a dataset card that says what ran and survives odd reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feinschliff.ingest import run_ingest
from feinschliff.ingest.dedup import RowKeys, content_key, normalize
from feinschliff.ingest.derive import derive_record
from feinschliff.ingest.jsonio import dumps
from feinschliff.ingest.outputs import OUTPUTS, write_card
from feinschliff.ingest.records import FeedbackRecord, Message, Vote
from feinschliff.recipe import FeedbackSpec
from feinschliff.specs.feedback import DerivationRules

ROOT = Path(__file__).resolve().parents[2]
FLAT = ROOT / "data" / "samples" / "argilla" / "feedback-de-flat.jsonl"
ANSWERS = {"a": "Antwort A", "b": "Antwort B", "c": "Antwort C"}


def ranked(*orders: str, answers=None) -> FeedbackRecord:
    """One ranking vote per order, e.g. ``"abc"`` = a first, c last."""
    votes = [Vote(kind="ranking", annotator=f"u{i}", value=list(o)) for i, o in enumerate(orders)]
    return FeedbackRecord(
        source="argilla",
        source_id="r1",
        prompt=[Message(role="user", content="Frage?")],
        answers=answers or ANSWERS,
        votes=votes,
    )


def labelled(*labels: str | None, answers=None) -> FeedbackRecord:
    votes = [Vote(kind="preference", annotator=f"u{i}", value=v) for i, v in enumerate(labels)]
    return FeedbackRecord(
        source="argilla",
        source_id="r1",
        prompt=[Message(role="user", content="Frage?")],
        answers=answers or {"a": "Antwort A", "b": "Antwort B"},
        votes=votes,
    )


def pair(rec: FeedbackRecord, aggregation: str):
    derived = derive_record(rec, DerivationRules(aggregation=aggregation))
    rows = [
        (p["chosen"][0]["content"][-1], p["rejected"][0]["content"][-1]) for p in derived.preference
    ]
    return (rows[0] if rows else None), dict(derived.drops), dict(derived.disagreements)


@pytest.mark.parametrize(
    ("orders", "aggregation", "want", "drop"),
    [
        # the review's case: first places a, a, b, c: a has 2 of 4 votes, no strict majority
        (["abc", "acb", "bac", "cba"], "majority", None, "preference_no_majority"),
        # mean places: a 1.75, b 2.0, c 2.25: best and worst mean place
        (["abc", "acb", "bac", "cba"], "mean", ("A", "C"), None),
        # rejected is the answer the votes place last, not the first other field (b)
        (["acb", "acb", "bca"], "majority", ("A", "B"), None),
        (["acb", "acb", "bca"], "mean", ("A", "B"), None),
        # a is first in 2 of 3 votes, but no answer is last in more than half of them
        (["abc", "acb", "bca"], "majority", None, "preference_no_worst"),
        (["abc", "abc"], "unanimous", ("A", "C"), None),
        (["abc", "acb"], "unanimous", None, "preference_not_unanimous"),
        (["ab", "ba"], "majority", None, "preference_draw"),
        (["ab", "ba"], "mean", None, "preference_draw"),
    ],
)
def test_rankings_need_the_documented_majority(orders, aggregation, want, drop):
    got, drops, disagreements = pair(ranked(*orders), aggregation)
    assert got == want
    assert drops.get(drop, 0) == (1 if drop else 0)
    assert disagreements.get("preference", 0) == (1 if len(set(orders)) > 1 else 0)


@pytest.mark.parametrize(
    ("labels", "aggregation", "want", "drop"),
    [
        (["a", "a", "b"], "majority", ("A", "B"), None),
        (["a", None, "b", "b"], "mean", ("B", "A"), None),  # a `tie` label does not vote
        (["a", "b"], "majority", None, "preference_draw"),
        (["b", "b"], "unanimous", ("B", "A"), None),
    ],
)
def test_two_answer_labels_keep_their_behaviour(labels, aggregation, want, drop):
    got, drops, _ = pair(labelled(*labels), aggregation)
    assert got == want and drops.get(drop, 0) == (1 if drop else 0)


def test_a_label_over_three_answers_names_no_worst_one():
    """A label says which answer is best, not which is worst: with three answers a pair needs
    other votes that single one out (old code paired with the first other field)."""
    got, drops, _ = pair(labelled("a", "a", answers=ANSWERS), "majority")
    assert got is None and drops == {"preference_no_worst": 1, "no_training_signal": 1}
    got, _, _ = pair(labelled("a", "a", "b", answers=ANSWERS), "mean")  # c: never chosen
    assert got == ("A", "C")


# ---------------------------------------------------------------------------- exact dedup

BASE = "Im Kundenportal unter Zählerstand melden."
VARIANTS = [
    "im KUNDENPORTAL  unter Zählerstand melden.",
    "Im Kundenportal\nunter Zählerstand melden.",
    BASE + "\n",
    BASE + " ",
    " " + BASE,
    "Im Kundenportal\tunter Zählerstand melden.",
    "Im Kundenportal\u00a0unter\u2028Zählerstand melden.",
]


def sft(answer: str, question: str = "Wie melde ich den Zählerstand?") -> dict:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_whitespace_and_case_do_not_make_a_row_new(variant):
    keys = RowKeys()
    want = content_key(sft(BASE), ("messages",))
    assert content_key(sft(variant), ("messages",)) == want
    assert keys.content_key(sft(variant), ("messages",)) == want
    assert content_key(sft(BASE), ("messages",)) != content_key(sft(BASE + " bitte"), ("messages",))
    # text stays text: a newline is no `\n` escape that could match a literal backslash-n
    assert content_key(sft("a\nb"), ("messages",)) != content_key(sft("a\\nb"), ("messages",))


# heldout_hash(seed, prompt)[:8] for seeds 0 and 7, computed with the code before the exact-dedup
# key changed (HEAD e5563be): a prompt once held out must stay held out.
FROZEN = [
    ([{"role": "user", "content": "Wie melde ich meinen Zählerstand?"}], "d4b12722af92fc63", "28b2a99030c30c6b"),
    ([{"role": "user", "content": "Wie melde ich meinen Zählerstand?\n"}], "1325161365cee56b", "2bdf9461d475d49f"),
    ([{"role": "user", "content": "Wie melde ich\tmeinen  Zählerstand? "}], "e4234b5f4e05e6ec", "e455a3cb1294c5c4"),
    (
        [
            {"role": "system", "content": "Du bist der Kundenservice."},
            {"role": "user", "content": "ΟΔΟΣ Σ ΣΑΣ ﬁnanz ＡＢＣ"},
        ],
        "abbb7d8bf073a013",
        "f65093b85f70bc25",
    ),
    ([{"role": "user", "content": 'quote " and \\ backslash \u2028 e\u0301'}], "70d9c5f83941a2c5", "38e674afdbcc276d"),
]  # fmt: skip


def test_the_heldout_split_is_frozen():
    keys = RowKeys()
    for prompt, seed0, seed7 in FROZEN:
        keys.content_key({"prompt": prompt}, ("prompt",))  # a shared memo must not leak into it
        assert keys.heldout_hash(0, prompt)[:8].hex() == seed0
        assert keys.heldout_hash(7, prompt)[:8].hex() == seed7
        assert keys.normalized(prompt) == normalize(dumps(prompt).decode())  # the old formula


def test_a_reexported_record_with_a_trailing_newline_is_an_exact_duplicate(tmp_path, home):
    """The review's r10 case: a record exported again with whitespace changes (near-dup off)."""
    lines = FLAT.read_text(encoding="utf-8").splitlines()
    again = json.loads(lines[0])
    again["id"] += "-again"
    again["prompt"] = again["prompt"].replace(" ", "  ", 1) + "\n"
    again["response_a"] += "\n"
    data = tmp_path / "flat.jsonl"
    data.write_text("\n".join([*lines, json.dumps(again, ensure_ascii=False)]) + "\n", "utf-8")

    def ingest(path: Path, out: str) -> dict:
        spec = {
            "sources": [{"kind": "argilla", "path": str(path)}],
            "pii": {"mode": "off"},
            "dedup": {"near": False},
            "decontamination": {"enabled": False},
        }
        run_ingest(FeedbackSpec.model_validate(spec), tmp_path / out)
        return json.loads((tmp_path / out / "manifest.json").read_text())

    plain, doubled = ingest(FLAT, "plain"), ingest(data, "doubled")
    assert doubled["counts"] == plain["counts"]
    assert doubled["drops"]["duplicate_sft_row"] == 1
    assert doubled["drops"]["duplicate_preference_row"] >= 1


# ---------------------------------------------------------------------------- dataset card


def manifest(**dedup) -> dict:
    return {
        "status": "complete",
        "counts": dict.fromkeys(OUTPUTS, 1),
        "sources": [
            {
                "kind": "argilla",
                "format": "a|b",
                "path": "/x/ugly|name",
                "records": 1,
                "quarantined": 1,
            }
        ],
        "drops": {"quarantined: bad | value\nsecond line": 1, "no_training_signal": 2},
        "rules": {"aggregation": "mean", "min_rating": 4},
        "dedup": {"exact": True, "near": True, "threshold": 0.85, **dedup},
        "decontamination": {"eval_sets": [], "ngram": 13, "unchecked": []},
        "pii": {"mode": "off"},
        "heldout_fraction": 0.1,
        "notes": [],
    }


@pytest.mark.parametrize(
    ("exact", "near", "said"),
    [
        (True, True, "exact (normalised content) and near-duplicate (MinHash LSH"),
        (True, False, "exact (normalised content); near-duplicate removal was off"),
        (False, True, "threshold\n  0.85); exact removal was off"),
        (False, False, "Deduplication: none"),
    ],
)
def test_the_card_says_which_dedup_ran(tmp_path, exact, near, said):
    write_card(tmp_path, manifest(exact=exact, near=near))
    card = (tmp_path / "README.md").read_text()
    assert said in card
    if not near:
        assert "near-duplicate (MinHash" not in card


def test_card_tables_survive_pipes_and_newlines_in_reasons(tmp_path):
    write_card(tmp_path, manifest())
    lines = (tmp_path / "README.md").read_text().splitlines()
    assert "| quarantined: bad \\| value second line | 1 |" in lines
    assert "| argilla | a\\|b | `/x/ugly\\|name` | 1 | 1 |" in lines
    for line in lines:  # every table row has the cells of its header
        if (
            line.startswith("| reason")
            or line.startswith("| quarantined")
            or line.startswith("| no_")
        ):
            assert line.replace("\\|", "").count("|") == 3, line
