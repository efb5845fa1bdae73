"""Read Langfuse API pages: v2 observations joined with v3 scores.

Input: a directory of JSON pages as returned by ``GET /api/public/v2/observations`` and
``GET /api/public/v3/scores`` (each ``{"data": [...], "meta": {...}}``), recognised by their
rows, not their file names. In v2, ``input``/``output`` arrive as JSON *strings* and are decoded
here (FACTS 10.2.1). Scores attach to an observation (``subject.kind == "observation"``) or, for
trace scores, to the trace's last GENERATION.

Score mapping: BOOLEAN -> thumbs up/down of the observation's output; CORRECTION -> a human
correction of it; NUMERIC and CATEGORICAL are kept as provenance only (their scale is
project-specific).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from feinschliff.artifacts import sha256_file
from feinschliff.ingest.records import FeedbackRecord, Message, Quarantined, ReadResult, Vote


def page_kind(page: Any) -> str | None:
    """'observations', 'scores' or None for a decoded JSON page."""
    if not isinstance(page, dict) or not isinstance(page.get("data"), list):
        return None
    rows = [r for r in page["data"] if isinstance(r, dict)]
    if not rows:
        return None
    if all("dataType" in r for r in rows):
        return "scores"
    if all("traceId" in r and "type" in r for r in rows):
        return "observations"
    return None


def is_langfuse_pages(path: Path) -> bool:
    for f in _json_files(path):
        try:
            if page_kind(json.loads(f.read_text(encoding="utf-8"))):
                return True
        except (ValueError, UnicodeDecodeError):
            continue
    return False


def _json_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.json")) if path.is_dir() else [path]


def read_langfuse_pages(path: Path) -> ReadResult:
    result = ReadResult()
    observations: list[tuple[str, dict[str, Any]]] = []
    scores: list[tuple[str, dict[str, Any]]] = []
    for f in _json_files(path):
        result.inputs[str(f)] = sha256_file(f)
        try:
            page = json.loads(f.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            result.quarantined.append(_q(str(f), f"not JSON: {exc}", None))
            continue
        kind = page_kind(page)
        if kind is None:
            result.quarantined.append(
                _q(str(f), "not a Langfuse observations or scores page", None)
            )
            continue
        target = observations if kind == "observations" else scores
        target.extend((f"{f}#data[{i}]", row) for i, row in enumerate(page["data"]))

    by_obs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    last_generation: dict[str, str] = {}
    for _, row in sorted(observations, key=lambda x: str(x[1].get("startTime"))):
        if isinstance(row, dict) and row.get("type") == "GENERATION" and row.get("id"):
            last_generation[str(row.get("traceId"))] = str(row["id"])
    for where, score in scores:
        obs_id = _score_target(score, last_generation)
        if obs_id is None:
            result.quarantined.append(_q(where, "score refers to no known generation", score))
        else:
            by_obs[obs_id].append(score)

    for where, row in observations:
        if not isinstance(row, dict) or row.get("type") != "GENERATION":
            continue  # spans and events carry no prompt/answer pair
        try:
            result.records.append(_to_record(row, by_obs.get(str(row.get("id")), [])))
        except (ValueError, TypeError, ValidationError) as exc:
            reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            result.quarantined.append(_q(where, reason, row))
    return result


def _q(where: str, reason: str, raw: Any) -> Quarantined:
    return Quarantined(source="langfuse", location=where, reason=reason, raw=raw)


def _score_target(score: Any, last_generation: dict[str, str]) -> str | None:
    if not isinstance(score, dict):
        return None
    subject = score.get("subject") or {}
    if subject.get("kind") == "observation" and subject.get("id"):
        return str(subject["id"])
    if score.get("observationId"):  # v2 score shape
        return str(score["observationId"])
    trace = subject.get("traceId") or subject.get("id") if subject.get("kind") == "trace" else None
    trace = trace or score.get("traceId")
    return last_generation.get(str(trace)) if trace else None


def _decode(value: Any) -> Any:
    """v2 observations return input/output as JSON strings; plain text stays text."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _messages(value: Any) -> list[Message]:
    value = _decode(value)
    if isinstance(value, dict) and "messages" in value:
        value = value["messages"]
    if isinstance(value, str) and value.strip():
        return [Message(role="user", content=value)]
    if isinstance(value, list) and value:
        return [Message.model_validate(m) for m in value]
    raise ValueError("observation input holds no prompt")


def _answer(value: Any) -> str:
    value = _decode(value)
    if isinstance(value, dict):
        if isinstance(value.get("content"), str):
            return value["content"]
        choices = value.get("choices")
        if isinstance(choices, list) and choices:
            return str(choices[0].get("message", {}).get("content", ""))
    if isinstance(value, str):
        return value
    raise ValueError("observation output holds no assistant text")


def _to_record(row: dict[str, Any], scores: list[dict[str, Any]]) -> FeedbackRecord:
    prompt = _messages(row.get("input"))
    answer = _answer(row.get("output"))
    if not answer.strip():
        raise ValueError("observation output is empty")
    votes = []
    for s in scores:
        kind, value = s.get("dataType"), s.get("value")
        who = s.get("authorUserId") or row.get("userId")  # v2 rows carry userId top-level
        if kind == "BOOLEAN":
            up = (
                value
                if isinstance(value, bool)
                else str(s.get("stringValue", value)).lower() in ("true", "1", "1.0")
            )
            votes.append(Vote(kind="thumbs", annotator=who, answer="output", value=bool(up)))
        elif kind == "CORRECTION":
            text = value if isinstance(value, str) else s.get("stringValue")
            if isinstance(text, str) and text.strip():
                votes.append(Vote(kind="correction", annotator=who, answer="output", value=text))
    return FeedbackRecord(
        source="langfuse",
        source_id=str(row["id"]),
        trace_id=str(row.get("traceId")),
        observation_id=str(row["id"]),
        timestamp=row.get("startTime"),
        prompt=prompt,
        answers={"output": answer},
        votes=votes,
    )
