"""Langfuse scores: their rows in the scores database, the votes they give, and a generation
with its votes as a record (shared by the observation join and the self-contained exports).

A score's row keeps the time as a ``time_key`` (not the stamp's text), so "ORDER BY ts" lists
an observation's votes in the order they were given, whatever ISO-8601 shape each stamp has:
the first correction given is the one used (``derive``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from feinschliff.ingest.jsonio import dumps
from feinschliff.ingest.langfuse_rows import answer_text, messages
from feinschliff.ingest.records import (
    DETAIL_CHARS,
    FeedbackRecord,
    Unusable,
    Vote,
    finite,
    vote,
    window,
)
from feinschliff.ingest.timestamps import time_key

ERRORS = (ValueError, TypeError, KeyError, ValidationError)
SIGNAL_SCORES = frozenset(("BOOLEAN", "CORRECTION"))  # the score types that make training rows


def create_scores_db(path: Path) -> sqlite3.Connection:
    sdb = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=FILE", "cache_size=-16384"):
        sdb.execute(f"PRAGMA {pragma}")
    sdb.execute(
        "CREATE TABLE scores (id TEXT PRIMARY KEY, obs TEXT, trace TEXT, ts TEXT, "
        "location TEXT, payload BLOB)"
    )
    sdb.execute("BEGIN")  # one transaction per phase: a commit per insert batch costs writes
    return sdb


INSERT_SCORE = "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?)"


def score_row(where: str, score: dict[str, Any]) -> tuple[Any, ...]:
    """The scratch-table row of a score: id, observation, trace, time, location, payload."""
    subject = score.get("subject") if isinstance(score.get("subject"), dict) else {}
    obs = subject.get("id") if subject.get("kind") == "observation" else None
    obs = obs or score.get("observationId")
    trace = subject.get("traceId") or (
        subject.get("id") if subject.get("kind") == "trace" else None
    )
    trace = trace or score.get("traceId")
    return (
        str(score.get("id") or where),
        str(obs) if obs else None,
        str(trace) if trace else None,
        time_key(score.get("timestamp")),
        where,
        dumps(score),
    )


def score_votes(
    scores: list[tuple[str, dict[str, Any]]], row: dict[str, Any], stats: list[str]
) -> tuple[list[Vote], list[tuple[str, dict[str, Any], Exception]]]:
    """The votes of an observation's scores (each with where it was read), and the scores
    that cannot be read (where, score, why)."""
    votes, broken = [], []
    for where, s in scores:
        try:
            v = score_vote(s, row.get("userId"))
        except ERRORS as exc:
            broken.append((where, s, exc))
            continue
        if v is None:
            stats.append(f"langfuse_score_{s.get('dataType')}_not_used")
        else:
            votes.append(v)
    return votes, broken


def score_vote(score: dict[str, Any], end_user: Any) -> Vote | None:
    """BOOLEAN -> thumbs, CORRECTION -> correction; other data types -> None."""
    kind, value = score.get("dataType"), score.get("value")
    who = score.get("authorUserId") or end_user  # an end user's thumbs: the trace's user
    who = str(who) if who is not None else None
    stamp = score.get("timestamp")
    if kind == "BOOLEAN":
        if isinstance(value, bool):
            up = value
        elif isinstance(score.get("stringValue"), str):
            up = score["stringValue"].strip().lower() in ("true", "1", "1.0")
        elif isinstance(value, int | float):
            up = finite(value) >= 0.5
        else:
            raise Unusable("BOOLEAN score has no usable value", _score_detail(score))
        return vote("thumbs", annotator=who, answer="output", value=up, timestamp=stamp)
    if kind == "CORRECTION":
        text = value if isinstance(value, str) else score.get("stringValue")
        if isinstance(text, str) and text.strip():
            return vote("correction", annotator=who, answer="output", value=text, timestamp=stamp)
        raise Unusable("CORRECTION score has no text", _score_detail(score))
    return None


def _score_detail(score: dict[str, Any]) -> str:
    # cut to its shown length only after scrubbing (quarantine): half an e-mail is not found
    return window(f"score {score.get('id')}, value {score.get('value')!r}", DETAIL_CHARS)


def observation_record(row: dict[str, Any], votes: list[Vote], where: str) -> FeedbackRecord:
    answer = answer_text(row.get("output"))
    if not answer.strip():
        raise ValueError("observation output is empty")
    return FeedbackRecord.build(
        source="langfuse",
        source_id=str(row["id"]),
        location=where,
        trace_id=str(row["traceId"]) if row.get("traceId") else None,
        observation_id=str(row["id"]),
        timestamp=str(row["startTime"]) if row.get("startTime") else None,
        prompt=messages(row.get("input")),
        answers={"output": answer},
        votes=votes,
    )
