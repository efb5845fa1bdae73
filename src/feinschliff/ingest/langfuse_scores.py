"""Langfuse scores: their rows in the scores database, the votes they give, and a generation
with its votes as a record (shared by the observation join and the self-contained exports).

A score's row keeps the time as a ``time_key`` (not the stamp's text), so "ORDER BY ts" lists
an observation's votes in the order they were given, whatever ISO-8601 shape each stamp has:
the first correction given is the one used (``derive``).

A BOOLEAN score is an end user's thumbs only when its name is in ``rules.thumbs_scores``; one
of another name (an LLM judge's ``hallucination``) is no training signal: counted as not used
(``NOT_THUMBS``), its name listed in one manifest note (``note_skips``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from feinschliff.ingest.jsonio import dumps
from feinschliff.ingest.langfuse_inputs import (
    OTHER_TEXTS,
    TOOL_CALLS,
    Skips,
    answer_text,
    messages,
)
from feinschliff.ingest.records import (
    DETAIL_CHARS,
    FeedbackRecord,
    ReadLog,
    Unusable,
    Vote,
    finite,
    vote,
    window,
)
from feinschliff.ingest.timestamps import time_key

ERRORS = (ValueError, TypeError, KeyError, ValidationError)
SIGNAL_SCORES = frozenset(("BOOLEAN", "CORRECTION"))  # the score types that make training rows
NOT_THUMBS = "langfuse_score_BOOLEAN_not_used"  # a BOOLEAN not named in rules.thumbs_scores
NO_GENERATION = "score refers to no known generation"


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
    scores: list[tuple[str, dict[str, Any]]],
    row: dict[str, Any],
    stats: list[str],
    thumbs: Collection[str],
    skips: Skips,
) -> tuple[list[Vote], list[tuple[str, dict[str, Any], Exception]]]:
    """The votes of an observation's scores (each with where it was read), and the scores
    that cannot be read (where, score, why). ``thumbs``: ``rules.thumbs_scores``."""
    votes, broken = [], []
    for where, s in scores:
        try:
            v = score_vote(s, row.get("userId"), thumbs)
        except ERRORS as exc:
            broken.append((where, s, exc))
            continue
        if v is None:
            stats.append(f"langfuse_score_{s.get('dataType')}_not_used")
            not_thumbs(s, skips)
        else:
            votes.append(v)
    return votes, broken


def not_thumbs(score: dict[str, Any], skips: Skips) -> None:
    """Lists a BOOLEAN score that was no thumbs in the note (its name; the caller counts it)."""
    if score.get("dataType") == "BOOLEAN":
        skips.setdefault(NOT_THUMBS, set()).add(str(score.get("name")))


def signal(score: Any, thumbs: Collection[str]) -> bool:
    """Would the score make training rows (a correction, or thumbs of a name in ``thumbs``)?"""
    kind = score.get("dataType") if isinstance(score, dict) else None
    return kind == "CORRECTION" or (kind == "BOOLEAN" and _named(score, thumbs))


def _named(score: dict[str, Any], thumbs: Collection[str]) -> bool:
    name = score.get("name")
    return type(name) is str and name in thumbs


def score_vote(score: dict[str, Any], end_user: Any, thumbs: Collection[str]) -> Vote | None:
    """BOOLEAN named in ``thumbs`` -> thumbs, CORRECTION -> correction; others -> None."""
    kind, value = score.get("dataType"), score.get("value")
    if kind == "BOOLEAN" and not _named(score, thumbs):
        return None  # a judge's or eval's verdict (checked first: its value is not ours to read)
    # v3 with fields=annotation may nest the author there (FACTS shows it flat); else an end
    # user's thumbs: the trace's user (a v2 score row names it; v1 observations do not)
    annotation, trace = score.get("annotation"), score.get("trace")
    nested = annotation.get("authorUserId") if isinstance(annotation, dict) else None
    trace_user = trace.get("userId") if isinstance(trace, dict) else None
    who = score.get("authorUserId") or nested or end_user or trace_user
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


def observation_record(
    row: dict[str, Any], votes: list[Vote], where: str, template: str | None = None
) -> FeedbackRecord:
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
        prompt=messages(row.get("input"), template),
        answers={"output": answer},
        votes=votes,
    )


def note_skips(log: ReadLog, skips: Skips, thumbs: list[str]) -> None:
    """One manifest note per kind of skip, naming what was skipped (after the whole read:
    worker processes collect names too)."""
    if skips.get(NOT_THUMBS):
        log.note(
            f"BOOLEAN scores named {_names(skips[NOT_THUMBS])} were not used: only the names "
            f"in feedback.rules.thumbs_scores ({thumbs}) are end users' thumbs up/down, not a "
            f"judge's or eval's verdict; add a name there if it is one (counted as {NOT_THUMBS}, "
            "or langfuse_score_BOOLEAN_without_generation)."
        )
    if TOOL_CALLS in skips:
        log.note(
            "Langfuse generations with tool calls (an assistant turn calling a tool, a tool's "
            "result, or a tool call as the answer) were not used: tool-call conversations are "
            f"not used for training (counted as {TOOL_CALLS})."
        )
    if skips.get(OTHER_TEXTS):
        log.note(
            f"Langfuse inputs that are objects holding texts besides their prompt (keys "
            f"{_names(skips[OTHER_TEXTS])}) were not used, so that nothing is trained without "
            f"them (counted as {OTHER_TEXTS}); set this source's "
            "feedback.sources[i].mapping.prompt_template, a str.format text naming the keys "
            "(e.g. '{context}'), to build the prompt from them."
        )


def _names(names: set[str], shown: int = 20) -> str:
    listed = sorted(names)
    more = f" and {len(listed) - shown} more" if len(listed) > shown else ""
    return ", ".join(listed[:shown]) + more
