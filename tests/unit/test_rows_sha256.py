"""The rows' hash ignores where a row was read from, nothing else."""

from __future__ import annotations

import json
from pathlib import Path

from feinschliff.artifacts import DatasetRef, rows_sha256


def _dataset(folder: Path, location: str, answer: str = "Im Kundenportal.") -> DatasetRef:
    row = {
        "messages": [
            {"role": "user", "content": "Wie ändere ich den Abschlag?"},
            {"role": "assistant", "content": answer},
        ],
        "provenance": {"source": "argilla", "source_id": "r1", "location": location},
    }
    folder.mkdir(parents=True)
    (folder / "sft.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n")
    (folder / "manifest.json").write_text(json.dumps({"location": location}))
    return DatasetRef(path=str(folder), sha256="0" * 64)


def test_a_row_read_from_another_pull_file_hashes_the_same(tmp_path):
    """A live pull writes each pull to a new mirror file: unchanged rows must keep their key
    (later stages reuse their results; the flow resumes its run after a crash)."""
    first = rows_sha256(_dataset(tmp_path / "a", "/mirror/records-20261126T0900.jsonl:1"))
    again = rows_sha256(_dataset(tmp_path / "b", "/mirror/records-20261126T1000.jsonl:7"))
    assert first == again
    changed = rows_sha256(_dataset(tmp_path / "c", "/mirror/x.jsonl:1", "Per Post."))
    assert changed != first


def test_an_edited_file_is_hashed_again(tmp_path):
    data = _dataset(tmp_path / "a", "x:1")
    before = rows_sha256(data)
    path = tmp_path / "a" / "sft.jsonl"
    path.write_text(path.read_text().replace("Kundenportal", "Portal"))
    assert rows_sha256(data) != before
