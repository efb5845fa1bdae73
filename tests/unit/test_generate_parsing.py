"""Teacher replies -> questions, answers and ratings; which questions are kept and why."""

from __future__ import annotations

import json

from feinschliff.generate.select import select_instructions
from feinschliff.generate.templates import (
    instructions_schema,
    parse_instructions,
    parse_ratings,
    ratings_schema,
)


def test_instructions_from_json_reply():
    reply = json.dumps({"anfragen": [" Wie kündige ich? ", "", "Erkläre den Abschlag."]})
    assert parse_instructions(reply) == ["Wie kündige ich?", "Erkläre den Abschlag."]


def test_instructions_from_lines_strip_bullets_and_numbers():
    reply = "1. Wie melde ich den Zählerstand?\n- Was kostet Ökostrom?\n\n• Erkläre die Rechnung."
    assert parse_instructions(reply) == [
        "Wie melde ich den Zählerstand?",
        "Was kostet Ökostrom?",
        "Erkläre die Rechnung.",
    ]


def test_no_reply_gives_no_instructions():
    assert parse_instructions(None) == []
    assert parse_instructions("") == []


def test_ratings_from_json():
    reply = json.dumps(
        {"bewertungen": [{"note": 4, "begruendung": "gut"}, {"note": 2, "begruendung": "falsch"}]}
    )
    assert parse_ratings(reply, 2) == ([4, 2], ["gut", "falsch"])


def test_ratings_out_of_range_or_not_int_become_none():
    reply = json.dumps(
        {"bewertungen": [{"note": 7, "begruendung": "x"}, {"note": True, "begruendung": "y"}]}
    )
    assert parse_ratings(reply, 2)[0] == [None, None]


def test_ratings_with_wrong_count_are_all_unusable():
    reply = json.dumps({"bewertungen": [{"note": 4, "begruendung": "gut"}]})
    assert parse_ratings(reply, 2) == ([None, None], [None, None])


def test_ratings_from_text_blocks():
    reply = "Note: 5\nBegründung: korrekt\n\nNote: 1\nBegruendung: falsch"
    assert parse_ratings(reply, 2) == ([5, 1], ["korrekt", "falsch"])


def test_truncated_rating_reply_is_unparseable():
    assert parse_ratings('{"bewertungen": [{"note": 4, "begr', 2) == ([None, None], [None, None])
    assert parse_ratings(None, 3) == ([None] * 3, [None] * 3)


def test_schemas_bound_sizes_so_replies_fit_their_token_limit():
    s = instructions_schema(3, 150)["properties"]["anfragen"]
    assert (s["minItems"], s["maxItems"], s["items"]["maxLength"]) == (3, 3, 150)
    r = ratings_schema(2)["properties"]["bewertungen"]
    assert (r["minItems"], r["maxItems"]) == (2, 2)
    assert r["items"]["properties"]["note"]["enum"] == [1, 2, 3, 4, 5]


def test_select_counts_every_drop_reason_and_keeps_order():
    replies = [
        ("a", ["Wie melde ich den Zählerstand?", "kurz", "x" * 50]),
        ("b", None),
        ("c", []),
        ("d", ["wie melde  ich den ZÄHLERSTAND?", "Was kostet Ökostrom?", "Erkläre die Rechnung."]),
    ]
    selected, drops = select_instructions(replies, limit=2, min_chars=10, max_chars=40)
    assert selected == [("a", "Wie melde ich den Zählerstand?"), ("d", "Was kostet Ökostrom?")]
    assert drops == {
        "instruction_too_short": 1,
        "instruction_too_long": 1,
        "instruction_reply_missing_or_unparseable": 2,
        "instruction_duplicate": 1,
        "instruction_over_limit": 1,
    }


def test_ratings_from_markdown_and_out_of_five_text_blocks():
    """Judges write "Note: 4/5" or markdown; those used to parse to None (pair dropped)."""
    reply = (
        "**Note:** 4\n**Begründung:** korrekt\n\n"
        "Note: 2/5\nBegründung: ungenau\n\n"
        "__Note__: **5** von 5\n*Begründung:* vollständig"
    )
    assert parse_ratings(reply, 3) == ([4, 2, 5], ["korrekt", "ungenau", "vollständig"])


def test_ambiguous_text_ratings_stay_unparseable():
    for note in ("4/10", "3 oder 4", "45", "4 von 10"):
        assert parse_ratings(f"Note: {note}\nBegründung: x", 1) == ([None], [None]), note
