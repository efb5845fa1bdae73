"""A seed whose text repeats an earlier one is asked once: the teacher is paid per request."""

from __future__ import annotations

import json

from feinschliff.generate.seeds import plan_requests, read_seeds
from feinschliff.specs.generate import SeedsSpec


def test_repeated_seeds_are_left_out_and_named(tmp_path):
    (tmp_path / "themen.txt").write_text(
        "Zählerstand melden\nAbschlag ändern\n  zählerstand   MELDEN \nZählerstand melden\n"
    )
    docs = tmp_path / "docs"
    docs.mkdir()
    footer = "Stadtwerke Musterstadt, Kundenservice Mo-Fr 8-18 Uhr."
    for name, question in (("a", "Wie ändere ich meinen Tarif?"), ("b", "Wann kommt sie?")):
        (docs / f"{name}.jsonl").write_text(json.dumps(question) + "\n" + json.dumps(footer))
    seeds = read_seeds(
        SeedsSpec(topics=str(tmp_path / "themen.txt"), documents=str(docs), pii="off")
    )
    assert [text for _, text in seeds.items] == [
        "Zählerstand melden",
        "Abschlag ändern",
        "Wie ändere ich meinen Tarif?",
        footer,
        "Wann kommt sie?",
    ]
    assert seeds.repeats == {
        "themen.txt:3": "themen.txt:1",
        "themen.txt:4": "themen.txt:1",
        "b.jsonl#2": "a.jsonl#2",
    }
    # every self-instruct prompt the teacher gets is a different one
    plan = plan_requests(seeds.items, num_instructions=30, per_seed=3)
    assert len(plan) == 10 and len({text for _, text in plan}) == 10


def test_seeds_that_differ_only_in_content_are_all_kept(tmp_path):
    (tmp_path / "themen.txt").write_text("Tarif A\nTarif B\nTarif A.\n")
    seeds = read_seeds(SeedsSpec(topics=str(tmp_path / "themen.txt"), pii="off"))
    assert [text for _, text in seeds.items] == ["Tarif A", "Tarif B", "Tarif A."]
    assert seeds.repeats == {}
