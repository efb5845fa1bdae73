"""The held-out split keeps every turn of a conversation on one side.

A later turn's prompt carries the earlier turns and their answers. Split by the whole prompt,
turn 1 of a conversation could be held out while turn 2 (which quotes turn 1's answer) was
trained on: the held-out metrics would then score text the model had seen.
"""

from __future__ import annotations

import json
from pathlib import Path

from feinschliff.ingest import run_ingest
from feinschliff.ingest.prepare import conversation_opening
from feinschliff.recipe import FeedbackSpec

SYSTEM = {"role": "system", "content": "Du bist der Kundenservice der Stadtwerke."}


def _conversations(folder: Path, n: int) -> None:
    """``n`` two-turn Langfuse conversations, both turns thumbed up (SFT + KTO rows each)."""
    obs, scores = [], []
    for c in range(n):
        q1 = f"Wie ändere ich meinen Abschlag für Vertrag {c}?"
        a1 = f"Im Kundenportal unter Verträge, für Vertrag {c} ab dem nächsten Monat."
        q2 = f"Und wie lange dauert das bei Vertrag {c} ungefähr?"
        a2 = f"Etwa {c % 9 + 2} Werktage, Sie erhalten für Vertrag {c} eine Bestätigung."
        turns = [
            [SYSTEM, {"role": "user", "content": q1}],
            [
                SYSTEM,
                {"role": "user", "content": q1},
                {"role": "assistant", "content": a1},
                {"role": "user", "content": q2},
            ],
        ]
        for t, (prompt, answer) in enumerate(zip(turns, (a1, a2), strict=True)):
            oid = f"o{c}-{t}"
            obs.append(
                {
                    "id": oid,
                    "traceId": f"t{c}",
                    "type": "GENERATION",
                    "startTime": f"2026-01-01T00:{c // 60 % 60:02d}:{c % 60:02d}Z",
                    "input": json.dumps(prompt),
                    "output": json.dumps({"role": "assistant", "content": answer}),
                }
            )
            scores.append(
                {
                    "id": f"s-{oid}",
                    "name": "user-feedback",
                    "dataType": "BOOLEAN",
                    "value": True,
                    "subject": {"kind": "observation", "id": oid},
                }
            )
    folder.mkdir()
    (folder / "obs.json").write_text(json.dumps({"data": obs, "meta": {}}))
    (folder / "scores.json").write_text(json.dumps({"data": scores, "meta": {}}))


def _conversation(row: dict) -> str:
    messages = row.get("messages") or row["prompt"]
    return messages[1]["content"]  # the first user message names the conversation


def test_both_turns_of_a_conversation_land_on_the_same_side(tmp_path):
    _conversations(tmp_path / "lf", 40)
    spec = FeedbackSpec.model_validate(
        {
            "sources": [{"kind": "langfuse", "path": str(tmp_path / "lf")}],
            "pii": {"mode": "off"},
            "heldout_fraction": 0.5,
            "dedup": {"near": False},
        }
    )
    out = tmp_path / "out"
    run_ingest(spec, out)
    for kind in ("sft", "kto"):
        lines = (out / f"{kind}.jsonl").read_text(encoding="utf-8").splitlines()
        held_lines = (out / "heldout" / f"{kind}.jsonl").read_text(encoding="utf-8").splitlines()
        train = [json.loads(line) for line in lines]
        held = [json.loads(line) for line in held_lines]
        assert len(train) + len(held) == 80, kind  # every turn kept, on one side or the other
        assert len(held) >= 10 and len(train) >= 10, kind  # the split is not degenerate
        assert not {_conversation(r) for r in train} & {_conversation(r) for r in held}, kind


def test_a_single_turn_prompt_is_its_own_opening():
    """Single-turn data keeps the split it always had."""
    prompt = [SYSTEM, {"role": "user", "content": "Hallo?"}]
    assert conversation_opening(prompt) == prompt
    later = [*prompt, {"role": "assistant", "content": "Ja?"}, {"role": "user", "content": "Gut."}]
    assert conversation_opening(later) == prompt
    assert conversation_opening([SYSTEM]) == [SYSTEM]
