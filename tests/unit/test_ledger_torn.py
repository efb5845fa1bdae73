"""The ledger stays readable whatever a kill or a full disk left at its end."""

from __future__ import annotations

from feinschliff.ledger import Ledger, effect_key


def test_a_line_torn_inside_a_multibyte_character_is_ignored(tmp_path):
    """Records are UTF-8 (a reviewer's comment, a use case's name): a line cut inside "ü"
    raised UnicodeDecodeError on every read, so every rerun of the run failed."""
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    key = effect_key("r", "approval", "uc", "sha")
    answer = {"approved": True, "by": "Jürgen", "comment": "Grüße"}
    assert ledger.perform(key, lambda: answer) == answer
    torn = '{"state": "done", "key": "k2", "result": {"comment": "Grüße"}}'.encode()
    with path.open("ab") as f:
        f.write(torn[: torn.index("ü".encode()) + 1])  # the kill: half of "ü"
    assert ledger.state(key) == ("done", answer)
    other = effect_key("r", "notify", "uc", None)
    assert ledger.perform(other, lambda: 1) == 1
    assert ledger.state(other) == ("done", 1) and len(ledger.records()) == 4
