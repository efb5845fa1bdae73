"""The eval split keeps whole conversations on one side for every method, and replay brings no
eval or ingest-held-out conversation back into training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feinschliff.train import data


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _openings(rows: list[dict]) -> set[str]:
    return {data.conversation_key(r) for r in rows}


def _two_turn_sft(i: int) -> list[dict]:
    """Turn 1 and turn 2 of one conversation: turn 2's messages hold all of turn 1."""
    first = [_user(f"Frage {i}"), _bot(f"Antwort {i}")]
    return [{"messages": first}, {"messages": [*first, _user("Und weiter?"), _bot(f"Mehr {i}")]}]


def _two_pairs(i: int) -> list[dict]:
    """Two preference pairs on one prompt (thumbs-up vs. each of two thumbs-down answers)."""
    prompt = [_user(f"Frage {i}")]
    return [
        {"prompt": prompt, "chosen": [_bot(f"gut {i}")], "rejected": [_bot(f"schlecht {i}")]},
        {"prompt": prompt, "chosen": [_bot(f"gut {i}")], "rejected": [_bot(f"falsch {i}")]},
    ]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(
    ("method", "file", "rows"),
    [
        ("sft", "sft.jsonl", [r for i in range(10) for r in _two_turn_sft(i)]),
        ("dpo", "preference.jsonl", [r for i in range(10) for r in _two_pairs(i)]),
        ("orpo", "preference.jsonl", [r for i in range(10) for r in _two_pairs(i)]),
        # a generate.mix weight of 2 repeats every row
        ("sft", "sft.jsonl", [r for i in range(10) for r in 2 * _two_turn_sft(i)[:1]]),
    ],
    ids=["sft-turns", "dpo-pairs", "orpo-pairs", "sft-copies"],
)
def test_no_eval_conversation_is_trained_on(tmp_path, method, file, rows, seed):
    """Split by row, an eval turn was trained on inside its later turn, an eval prompt through
    its other preference pair, an eval row through its copy."""
    _write(tmp_path / file, rows)
    prepared = data.prepare_rows(method, tmp_path, eval_fraction=0.3, seed=seed)
    assert prepared["eval"]
    assert len(prepared["train"]) + len(prepared["eval"]) == len(rows)
    assert not _openings(prepared["eval"]) & _openings(prepared["train"])


def test_conversations_that_open_alike_but_differ_in_case_or_spacing_stay_together():
    a = {"messages": [_user("Wie  geht es?"), _bot("Gut.")]}
    b = {"messages": [_user("wie geht es?\n"), _bot("Sehr gut.")]}
    c = {"messages": [{"role": "system", "content": "Sei knapp."}, _user("Hallo"), _bot("Hi")]}
    assert data.conversation_key(a) == data.conversation_key(b) != data.conversation_key(c)


def test_replay_brings_no_turn_of_an_eval_conversation_back(tmp_path):
    new = [r for i in range(10) for r in _two_turn_sft(i)[:1]]
    old = [r for i in range(10) for r in _two_turn_sft(i)[1:]]  # the later turns, kept earlier
    _write(tmp_path / "sft.jsonl", new)
    prepared = data.prepare_rows(
        "sft", tmp_path, eval_fraction=0.2, seed=0, replay=old, replay_fraction=0.9
    )
    assert prepared["replayed_rows"] == 8  # all but the two eval conversations' turns
    assert not _openings(prepared["eval"]) & _openings(prepared["train"])


def test_replay_brings_no_conversation_ingest_now_holds_out(tmp_path):
    """The production adapter's rows were split by an earlier feedback.seed or heldout_fraction:
    a conversation trained then may be held out for evaluation now, and replaying it would let
    the candidate train on what the gate compares it with."""
    new = [{"messages": [_user(f"Neu {i}"), _bot("A")]} for i in range(10)]
    old = [{"messages": [_user(f"Alt {i}"), _bot("B")]} for i in range(10)]
    _write(tmp_path / "sft.jsonl", new)
    _write(tmp_path / "heldout" / "sft.jsonl", [{"messages": [_user("Alt 3"), _bot("C")]}])
    _write(
        tmp_path / "heldout" / "preference.jsonl",
        [{"prompt": [_user("alt 4")], "chosen": [_bot("C")], "rejected": [_bot("D")]}],
    )
    prepared = data.prepare_rows(
        "sft", tmp_path, eval_fraction=0.0, seed=0, replay=old, replay_fraction=0.5
    )
    replayed = {r["messages"][0]["content"] for r in prepared["train"]} - {
        f"Neu {i}" for i in range(10)
    }
    assert prepared["replayed_rows"] == 8
    assert replayed == {f"Alt {i}" for i in range(10)} - {"Alt 3", "Alt 4"}


@pytest.mark.parametrize("method", ["sft", "dpo", "kto"])
def test_newer_feedback_on_a_prompt_wins_over_its_replayed_rows(tmp_path, method):
    """An answer accepted then and corrected now (or a preference turned): replaying the old
    row trained the superseded answer next to its correction."""
    prompts = [[_user(f"Frage {i}")] for i in range(10)]
    if method == "sft":
        new = [{"messages": [*p, _bot("richtig")]} for p in prompts]
        old = [{"messages": [*p, _bot("falsch")]} for p in prompts]
        old += [{"messages": [_user(f"Alt {i}"), _bot("alt")]} for i in range(5)]
        _write(tmp_path / "sft.jsonl", new)
    elif method == "dpo":
        new = [{"prompt": p, "chosen": [_bot("B")], "rejected": [_bot("A")]} for p in prompts]
        old = [{"prompt": p, "chosen": [_bot("A")], "rejected": [_bot("B")]} for p in prompts]
        old += [
            {"prompt": [_user(f"Alt {i}")], "chosen": [_bot("A")], "rejected": [_bot("B")]}
            for i in range(5)
        ]
        _write(tmp_path / "preference.jsonl", new)
    else:
        new = [
            {"prompt": p, "completion": [_bot("A")], "label": i % 2 == 0}
            for i, p in enumerate(prompts)
        ]
        old = [
            {"prompt": p, "completion": [_bot("A")], "label": i % 2 == 1}
            for i, p in enumerate(prompts)
        ]
        old += [
            {"prompt": [_user(f"Alt {i}")], "completion": [_bot("A")], "label": True}
            for i in range(5)
        ]
        _write(tmp_path / "kto.jsonl", new)
    prepared = data.prepare_rows(
        method, tmp_path, eval_fraction=0.0, seed=0, replay=old, replay_fraction=0.5
    )
    assert prepared["replayed_rows"] == 5  # only the prompts the new rows do not have
    assert all(r in new or r in old[10:] for r in prepared["train"])
