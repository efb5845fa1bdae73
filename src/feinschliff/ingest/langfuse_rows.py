"""Langfuse rows: iterate any file layout, tell row kinds apart, read UI-export thumbs columns.

Shared by the observation/score join (``langfuse``) and the self-contained exports
(``langfuse_exports``); prompts and answers are read by ``langfuse_inputs``. Row kinds, by
their keys (FACTS 10.2):

- ``observation``: ``traceId`` + ``type`` (API v1/v2 observations, UI observation export);
- ``score``: ``dataType`` + ``name`` (API v1/v2/v3 scores);
- ``trace_full``: ``observations`` holding objects (``GET /api/public/traces/{id}``);
- ``trace_ids``: ``observations`` holding id strings (the traces *list*: not enough to train on);
- ``dataset_item``: ``datasetId`` + ``input`` (+ ``expectedOutput``);
- ``trace_export``: a UI trace export row: ``id``, ``timestamp``, ``input``, ``output``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from feinschliff.ingest.jsonio import (
    Broken,
    data_array_start,
    first_char,
    head_of_page,
    iter_csv,
    iter_json_array,
    iter_jsonl,
    read_json,
    unreadable,
)
from feinschliff.ingest.langfuse_inputs import decode
from feinschliff.ingest.records import (
    LONE_SURROGATE,
    FeedbackRecord,
    LoneSurrogate,
    Quarantined,
    ReadLog,
    Unusable,
    Vote,
    broken_entry,
    detail_of,
    lone_surrogate_at,
    quarantined_exc,
    vote,
    without_surrogates,
)
from feinschliff.specs.feedback import DerivationRules

Item = FeedbackRecord | Quarantined
SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv")
STREAM_PAGE_BYTES = 16 << 20  # smaller pages are parsed whole (as a worker reads one)


def quarantine(where: str, reason: str, raw: Any, detail: str | None = None) -> Quarantined:
    return Quarantined(source="langfuse", location=where, reason=reason, raw=raw, detail=detail)


def quarantine_exc(where: str, exc: Exception, raw: Any) -> Quarantined:
    return quarantined_exc("langfuse", where, exc, raw)


def quarantine_broken(where: str, broken: Broken) -> Quarantined:
    return broken_entry("langfuse", where, broken)


def iter_rows(path: Path, log: ReadLog) -> Iterator[tuple[str, Any]]:
    """(location, row) for every row of a page, array, JSONL, CSV or single-object file."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        for n, row in iter_csv(path, log.inputs):
            yield f"{path}:{n}", row
    elif suffix in (".jsonl", ".ndjson"):
        for n, row in iter_jsonl(path, log.inputs):
            yield f"{path}:{n}", row
    elif first_char(path) == "[":
        for i, row in iter_json_array(path, log.inputs):
            yield f"{path}#{i}", row
    elif (start := _large_page(path)) is not None:  # read whole, it would fill the memory
        for i, row in iter_json_array(path, log.inputs, start):
            yield f"{path}#data[{i}]", row
    else:
        try:
            page, bad = read_json(path, log.inputs), False
        except LoneSurrogate as exc:  # only the rows holding one are quarantined
            page, bad = exc.value, True
        except (ValueError, UnicodeDecodeError) as exc:  # a truncated page: all its rows lost
            yield str(path), unreadable(path, f"not JSON: {exc}")
            return
        if isinstance(page, dict) and isinstance(page.get("data"), list):
            for i, row in enumerate(page["data"]):
                yield f"{path}#data[{i}]", _checked(row) if bad else row
        else:
            yield str(path), _checked(page) if bad else page


def _large_page(path: Path) -> int | None:
    """Where the ``data`` rows of a page over ``STREAM_PAGE_BYTES`` start (``iter_json_array``
    streams them); None for any other file. API pages hold at most 1000 rows; a whole export
    saved as one page would be parsed at once (~3x its size in memory)."""
    return page_data_start(path) if path.stat().st_size > STREAM_PAGE_BYTES else None


def page_data_start(path: Path, size: int = 1 << 20) -> int | None:
    """The position (in characters) of the ``[`` of a JSON object's top-level ``data`` array,
    when the members before it fit in the first ``size`` bytes; else None."""
    with path.open("rb") as f:
        head = f.read(size).decode("utf-8-sig", errors="replace")  # a cut character: at the end
    return data_array_start(head.replace("\r\n", "\n").replace("\r", "\n"))  # as read as text


def _checked(row: Any) -> Any:
    """A row of a page holding a lone surrogate somewhere: the row, or ``Broken`` if it is in it."""
    at = lone_surrogate_at(row)
    if at is None:
        return row
    return Broken(LONE_SURROGATE, without_surrogates(row), f"at {at}")


def row_kind(row: Any) -> str | None:
    if not isinstance(row, dict):
        return None
    if "dataType" in row and "name" in row:
        return "score"
    if "traceId" in row and "type" in row:
        return "observation"
    if isinstance(row.get("observations"), list):
        obs = row["observations"]
        return "trace_ids" if obs and all(isinstance(o, str) for o in obs) else "trace_full"
    if "datasetId" in row and "input" in row:
        return "dataset_item"
    if "id" in row and "input" in row and "output" in row and "timestamp" in row:
        return "trace_export"
    return None


def file_kind(path: Path, log: ReadLog, peek: int = 50) -> tuple[str | None, str]:
    """The kind of the first recognisable row among a file's first ``peek`` rows, and a
    description of what was found (for the error when nothing matches). ``unreadable``: the
    file cannot be parsed before any row is recognised (e.g. a truncated API page)."""
    first = None
    for n, (_, row) in enumerate(_peek(path)):
        if n >= peek:
            break
        if isinstance(row, Broken) and row.unreadable:
            return "unreadable", f"{path.name}: {row.reason} ({row.detail})"
        kind = row_kind(row) if not isinstance(row, Broken) else None
        if kind is not None:
            return kind, f"{path.name}: {kind}"
        if first is None:
            keys = sorted(map(str, row))[:8] if isinstance(row, dict) else type(row).__name__
            first = (
                f"{path.name}: {row.reason}"
                if isinstance(row, Broken)
                else (f"{path.name}: unknown row (keys {keys}){_training_rows_hint(row)}")
            )
    return None, first or f"{path.name}: no rows"


# TRL's dataset shapes (what train reads): a team's own training data, not feedback
TRL_SHAPES = ({"messages"}, {"prompt", "chosen", "rejected"}, {"prompt", "completion", "label"})


def _training_rows_hint(row: Any) -> str:
    if not isinstance(row, dict) or not any(shape <= row.keys() for shape in TRL_SHAPES):
        return ""
    return (
        ": training rows in TRL's format, not feedback; write your own data as Langfuse dataset "
        "items or trace-export rows (README: Your own data)"
    )


def _peek(path: Path) -> Iterator[tuple[str, Any]]:
    """Rows from the head of an API page without parsing the whole page (detection only)."""
    if path.suffix.lower() == ".json" and first_char(path) == "{":
        rows = head_of_page(path)
        if rows is not None:
            yield from ((str(path), r) for r in rows)
            return
    yield from iter_rows(path, ReadLog())


# --------------------------------------------------------------------------- thumbs columns


def column_votes(row: dict[str, Any], rules: DerivationRules) -> list[Vote]:
    """Thumbs from UI-export score columns (``[1]``, ``[0]``, averaged per trace)."""
    votes = []
    who = row.get("userId")
    for name in rules.thumbs_scores:
        cell = decode(row.get(name))
        if cell in (None, ""):
            continue
        for value in cell if isinstance(cell, list) else [cell]:
            up = _thumb(value)
            if up is not None:
                votes.append(
                    vote("thumbs", annotator=str(who) if who else None, answer="output", value=up)
                )
    return votes


def _thumb(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return None if value == 0.5 else value > 0.5
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise Unusable("thumbs score value is neither boolean nor 0/1", f"value {detail_of(value)}")
