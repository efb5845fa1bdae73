"""Langfuse timestamps are ordered by the moment they name, not by their text.

Exports mix ISO-8601 shapes (FACTS 10.2.2: the SDK models write ``...:02Z`` next to
``...:02.300000Z``; other tools write offsets). As text ``...:02Z`` sorts after ``...:02.3Z``
('Z' > '.') and ``11:00+01:00`` after ``10:30Z``: the "last generation" of a trace, the first
correction of an observation and a record's ``feedback_at`` were picked wrongly.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from feinschliff.ingest import pull, run_ingest
from feinschliff.ingest.langfuse_exports import read_exports
from feinschliff.ingest.records import FeedbackRecord, ReadLog, Vote
from feinschliff.ingest.timestamps import UNKNOWN, latest, parse_time, time_key
from feinschliff.specs.feedback import DerivationRules
from tests.unit.test_ingest import read_jsonl, spec

EARLY, LATE = "2025-03-04T10:15:02Z", "2025-03-04T10:15:02.300000Z"  # as text: EARLY > LATE


def _generation(oid: str, start: str, trace: str = "tr-1") -> dict:
    return {
        "id": oid,
        "traceId": trace,
        "type": "GENERATION",
        "startTime": start,
        "input": json.dumps([{"role": "user", "content": f"Frage zu {oid}?"}]),
        "output": json.dumps({"role": "assistant", "content": f"Antwort von {oid}."}),
    }


@pytest.mark.parametrize(
    "stamps",
    [
        [EARLY, LATE],
        ["2026-11-01T10:00:00Z", "2026-11-01T10:00:00.5Z", "2026-11-01T10:00:00.750Z"],
        ["2026-11-01T11:00:00+01:00", "2026-11-01T10:30:00Z", "2026-11-01T10:45:00.000Z"],
        ["2026-11-01 10:00:00", "2026-11-01T10:00:00.000001Z", "2026-11-01T10:00:01Z"],
    ],
)
def test_time_key_sorts_by_moment(stamps):
    moments = [parse_time(s) for s in stamps]
    assert sorted(stamps, key=time_key) == [s for _, s in sorted(zip(moments, stamps, strict=True))]
    assert latest(stamps) == stamps[moments.index(max(moments))]


@pytest.mark.parametrize("bad", [None, "", "gestern", 17, {"t": 1}, "0001-01-01T00:00:00+01:00"])
def test_a_stamp_naming_no_time_sorts_first_and_never_raises(bad):
    assert time_key(bad) == UNKNOWN < time_key("0001-01-01T00:00:00Z")
    if isinstance(bad, str):
        assert latest([bad, EARLY]) == EARLY


def test_feedback_at_is_the_newest_vote_not_the_largest_text():
    votes = [
        Vote(kind="thumbs", annotator="a", answer="output", value=True, timestamp=LATE),
        Vote(kind="thumbs", annotator="b", answer="output", value=True, timestamp=EARLY),
    ]
    record = FeedbackRecord(
        source="langfuse",
        source_id="o1",
        prompt=[{"role": "user", "content": "Frage?"}],
        answers={"output": "Antwort."},
        votes=votes,
    )
    assert record.provenance()["feedback_at"] == LATE


@pytest.mark.parametrize(
    ("first", "second"),
    [(EARLY, LATE), ("2025-03-04T11:15:03+01:00", "2025-03-04T10:15:04Z")],
)
def test_a_full_trace_gives_its_trace_score_to_the_latest_generation(tmp_path, first, second):
    """GET /api/public/traces/{id}: a score without observationId goes to the last generation."""
    trace = {
        "id": "tr-1",
        "timestamp": first,
        "input": "Frage?",
        "output": "Antwort.",
        "observations": [_generation("g-first", first), _generation("g-second", second)],
        "scores": [
            {
                "id": "s1",
                "name": "user-feedback",
                "dataType": "BOOLEAN",
                "value": 1,
                "timestamp": second,
            }
        ],
    }
    path = tmp_path / "trace-tr-1.json"
    path.write_text(json.dumps(trace))
    records = list(read_exports([path], ReadLog(), DerivationRules()))
    assert [r.observation_id for r in records] == ["g-second"]


def test_observation_pages_give_a_trace_score_to_the_latest_generation(tmp_path):
    """v2 observations + a v3 trace-level score: the trace's generations wait, then the one
    that started last gets the score."""
    src = tmp_path / "lf"
    src.mkdir()
    gens = [_generation("g-first", EARLY), _generation("g-second", LATE)]
    score = {
        "id": "s1",
        "name": "user-feedback",
        "dataType": "BOOLEAN",
        "value": True,
        "timestamp": LATE,
        "subject": {"kind": "trace", "id": "tr-1"},
    }
    (src / "scores-page-1.json").write_text(json.dumps({"data": [score], "meta": {}}))
    (src / "observations-page-1.json").write_text(json.dumps({"data": gens, "meta": {}}))
    out = tmp_path / "out"
    run_ingest(spec(("langfuse", src)), out)
    kto = read_jsonl(out / "kto.jsonl")
    assert [r["provenance"]["observation_id"] for r in kto] == ["g-second"]


def test_the_first_correction_is_the_earliest_one(tmp_path):
    """Two corrections of one generation: the first given is used (a counted disagreement);
    the later one's id sorts first, so only the time can decide."""
    src = tmp_path / "lf"
    src.mkdir()

    def fix(sid: str, text: str, when: str) -> dict:
        return {
            "id": sid,
            "name": "output",
            "dataType": "CORRECTION",
            "value": text,
            "timestamp": when,
            "subject": {"kind": "observation", "id": "g1", "traceId": "tr-1"},
        }

    scores = [fix("a-later", "Die spätere Korrektur.", LATE), fix("b-first", "Die erste.", EARLY)]
    (src / "scores-page-1.json").write_text(json.dumps({"data": scores, "meta": {}}))
    gens = [_generation("g1", EARLY)]
    (src / "observations-page-1.json").write_text(json.dumps({"data": gens, "meta": {}}))
    out = tmp_path / "out"
    run_ingest(spec(("langfuse", src)), out)
    sft = read_jsonl(out / "sft.jsonl")
    assert [r["messages"][-1]["content"] for r in sft] == ["Die erste."]
    assert sft[0]["provenance"]["feedback_at"] == LATE


def test_watermarks_advance_by_moment_across_shapes():
    started = datetime(2026, 11, 2, tzinfo=UTC)
    stamps = ["2026-11-01T10:00:00.5Z", "2026-11-01T11:00:00+01:00", "kaputt", None]
    assert pull._advance("2026-11-01T10:00:00.000Z", stamps, started) == "2026-11-01T10:00:00.500Z"
    assert pull._advance(None, ["kaputt"], started) is None
    assert pull._since("2026-11-01T10:00:00.500Z") == "2026-11-01T09:00:00.500Z"


def test_a_zero_time_watermark_does_not_break_the_next_pull():
    """A client's zero time (Go's 0001-01-01) as the only stamp became the watermark; the lookback
    before it overflowed on every later pull."""
    started = datetime(2026, 11, 2, tzinfo=UTC)
    mark = pull._advance(None, ["0001-01-01T00:00:00Z", "0001-01-01T00:30:00+01:00"], started)
    assert mark == "0001-01-01T00:00:00.000Z"
    assert pull._since(mark) is None  # fetch everything: nothing is before the start of time
    assert pull._since("garbage") is None
