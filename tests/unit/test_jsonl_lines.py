"""JSONL records holding U+2028/U+2029/U+0085: JSON writers with ensure_ascii=False (and orjson)
leave them raw inside strings, and `str.splitlines` splits there, which lost whole records."""

from __future__ import annotations

import json

import orjson

from feinschliff.artifacts import jsonl_lines
from feinschliff.evaluate.heldout import read_jsonl
from feinschliff.ledger import Ledger
from feinschliff.ngrams import index_jsonl

ODD = "ok\u2028looks good\u2029really\u0085yes"


def test_split_only_at_newlines():
    text = json.dumps({"c": ODD}, ensure_ascii=False) + "\n\n" + json.dumps({"c": 1}) + "\n"
    assert [json.loads(x) for x in jsonl_lines(text)] == [{"c": ODD}, {"c": 1}]


def test_a_ledger_record_with_a_line_separator_is_not_lost(tmp_path):
    """A reviewer's comment pasted with U+2028: the approval must not be asked again."""
    ledger = Ledger(tmp_path / "ledger.jsonl")
    calls = []

    def approve():
        calls.append(1)
        return {"approved": True, "comment": ODD}

    assert ledger.perform("approve", approve)["comment"] == ODD
    assert Ledger(tmp_path / "ledger.jsonl").perform("approve", approve)["comment"] == ODD
    assert calls == [1]


def test_feedback_rows_written_by_orjson_read_back_whole(tmp_path):
    row = {"prompt": [{"role": "user", "content": f"Frage {ODD}"}], "chosen": "a", "rejected": "b"}
    path = tmp_path / "preference.jsonl"
    path.write_bytes(orjson.dumps(row) + b"\n" + orjson.dumps(row) + b"\n")
    assert read_jsonl(path) == [row, row]
    eval_set = tmp_path / "set.jsonl"
    eval_set.write_bytes(orjson.dumps({"question": ODD * 3}) + b"\n")
    assert index_jsonl([eval_set]) is not None  # parsed, not a JSONDecodeError


def test_an_audit_entry_with_a_line_separator_is_read(tmp_path):
    from feinschliff.registry import audit_log, record_event

    (tmp_path / "reg" / "s").mkdir(parents=True)
    record_event(tmp_path / "reg", "s", "approval", why=ODD, approved=True, reviewer="ana")
    assert audit_log(tmp_path / "reg", "s")[-1]["why"] == ODD
