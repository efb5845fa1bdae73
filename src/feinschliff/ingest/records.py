"""The canonical feedback record every reader produces, and the quarantine entry.

Readers turn tool-specific exports into ``FeedbackRecord`` objects; derivation rules turn
records into training rows. A record keeps its provenance (source, ids, annotators, times, the
place it was read from) so every training row can be traced back to the feedback it came from.
Readers yield records and ``Quarantined`` entries one at a time and note what they skipped in a
``ReadLog``; nothing is collected in memory.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from feinschliff.ingest.pull_snapshot import mirror_location
from feinschliff.ingest.timestamps import latest

Source = Literal["argilla", "langfuse"]


ROLES = frozenset(("system", "user", "assistant", "tool"))
# No training text is this long; a longer string is hostile or broken input (quarantined).
MAX_TEXT_CHARS = 1_000_000
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
VOTE_KINDS = frozenset(("rating", "thumbs", "preference", "ranking", "correction", "reference"))


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: Text


def message(role: str, content: object) -> Message:
    """``Message(role=..., content=...)``; skips pydantic's validation on the hot path when a
    cheap check proves it would pass unchanged (a known role, an exact ``str``), else validates
    (and raises the same error)."""
    if type(content) is str and role in ROLES and len(content) <= MAX_TEXT_CHARS:
        return construct(Message, {"role": role, "content": content})
    return Message(role=role, content=content)  # type: ignore[arg-type]


def vote(
    kind: str,
    *,
    annotator: str | None = None,
    answer: str | None = None,
    value: Any = None,
    timestamp: object = None,
) -> Vote:
    """``Vote(...)`` with the same fast path as ``message``."""
    if (
        kind in VOTE_KINDS
        and (annotator is None or type(annotator) is str)
        and (answer is None or type(answer) is str)
        and (timestamp is None or type(timestamp) is str)
        and not (isinstance(value, str) and len(value) > MAX_TEXT_CHARS)
    ):
        return construct(
            Vote,
            {
                "kind": kind,
                "annotator": annotator,
                "answer": answer,
                "value": value,
                "timestamp": timestamp,
            },
        )
    return Vote(kind=kind, annotator=annotator, answer=answer, value=value, timestamp=timestamp)  # type: ignore[arg-type]


_set = object.__setattr__


def construct(cls: Any, values: dict[str, Any]) -> Any:
    """``cls.model_construct(**values)`` for ``values`` naming every field of ``cls`` in field
    order, without its per-field loop (these models have no aliases, post-init hooks or extra
    fields, so it sets exactly these four attributes; a unit test compares the two)."""
    obj = cls.__new__(cls)
    _set(obj, "__dict__", values)
    _set(obj, "__pydantic_fields_set__", set(values))
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


class Vote(BaseModel):
    """One judgement by one annotator (or end user) about one answer of a record."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["rating", "thumbs", "preference", "ranking", "correction", "reference"]
    annotator: str | None = None
    answer: str | None = Field(None, description="Key of the answer judged (rating, thumbs).")
    value: Any = None
    timestamp: str | None = None

    @field_validator("value")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            raise ValueError(f"text longer than {MAX_TEXT_CHARS} characters")
        return value


class FeedbackRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: Source
    source_id: str
    location: str = Field("", description="File and position the record was read from.")
    trace_id: str | None = None
    observation_id: str | None = None
    timestamp: str | None = None
    prompt: list[Message] = Field(min_length=1)
    answers: dict[str, Text] = Field(min_length=1, description="Answer key -> assistant text.")
    votes: list[Vote] = Field(default_factory=list)

    @field_validator("location")
    @classmethod
    def _in_mirror(cls, value: str) -> str:  # a pull's snapshot named as its mirror
        return mirror_location(value)

    @classmethod
    def build(cls, **fields: Any) -> FeedbackRecord:
        """``FeedbackRecord(**fields)``, skipping validation when a cheap check proves it
        would pass unchanged: every field of its exact type, already built ``Message`` and
        ``Vote`` objects, non-empty prompt and answers. Anything else is validated (and raises
        the same error as the constructor)."""
        if type(fields.get("location")) is str:  # validation (which maps it) may be skipped
            fields["location"] = mirror_location(fields["location"])
        if _valid_fields(fields):
            if tuple(fields) == _FIELDS:
                return construct(cls, fields)
            return cls.model_construct(**fields)
        return cls(**fields)

    @property
    def annotators(self) -> list[str]:
        return sorted({v.annotator for v in self.votes if v.annotator})

    def provenance(self) -> dict[str, Any]:
        stamps = [v.timestamp for v in self.votes if v.timestamp]
        return {
            "source": self.source,
            "source_id": self.source_id,
            "trace_id": self.trace_id,
            "observation_id": self.observation_id,
            "annotators": self.annotators,
            "timestamp": self.timestamp,
            "feedback_at": latest(stamps),
            "location": self.location,
        }


_OPTIONAL_STR = ("trace_id", "observation_id", "timestamp")
_FIELDS = tuple(FeedbackRecord.model_fields)
_FIELD_SET = frozenset(_FIELDS)


def _valid_fields(f: dict[str, Any]) -> bool:
    prompt, answers, votes = f.get("prompt"), f.get("answers"), f.get("votes", [])
    return (
        f.keys() <= _FIELD_SET
        and f.get("source") in ("argilla", "langfuse")
        and type(f.get("source_id")) is str
        and type(f.get("location", "")) is str
        and all(f.get(k) is None or type(f[k]) is str for k in _OPTIONAL_STR)
        and type(prompt) is list
        and len(prompt) > 0
        and all(type(m) is Message for m in prompt)
        and type(answers) is dict
        and len(answers) > 0
        and all(
            type(k) is str and type(v) is str and len(v) <= MAX_TEXT_CHARS
            for k, v in answers.items()
        )
        and type(votes) is list
        and all(type(v) is Vote for v in votes)
    )


class Quarantined(BaseModel):
    """A record that could not be used, kept with the reason and its raw value.

    ``reason`` is fixed text (the manifest counts drops by it); what varies (ids, values, the
    parser's message) goes to ``detail``. ``unreadable``: the reader stopped here, so the rest
    of the file (or all of it) was lost with an unknown number of records: the stage fails
    whatever the quarantined share. ``clip``: ``raw`` is a ``window`` of undecodable text, cut
    by ``shown`` after PII scrubbing. (Neither flag is written to ``quarantine.jsonl``.)"""

    source: str
    location: str
    reason: str
    raw: Any
    detail: str | None = None
    unreadable: bool = Field(False, exclude=True)
    clip: bool = Field(False, exclude=True)

    @field_validator("location")
    @classmethod
    def _in_mirror(cls, value: str) -> str:  # a pull's snapshot named as its mirror
        return mirror_location(value)


class Unusable(ValueError):
    """A value that cannot be used: a fixed ``reason`` and a ``detail`` naming what varies
    (an id, the value), so that drop counts do not split per id."""

    def __init__(self, reason: str, detail: str | None = None):
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason, self.detail = reason, detail


def quarantined(
    source: str, where: str, reason: str, raw: Any, detail: str | None = None
) -> Quarantined:
    return Quarantined(source=source, location=where, reason=reason, raw=raw, detail=detail)


def broken_entry(source: str, where: str, broken: Any) -> Quarantined:
    """The quarantine entry of a ``jsonio.Broken`` value (an undecodable row or file)."""
    return Quarantined(
        source=source,
        location=where,
        reason=broken.reason,
        raw=broken.raw,
        detail=broken.detail,
        unreadable=broken.unreadable,
        clip=broken.clip,
    )


def quarantined_exc(source: str, where: str, exc: Exception, raw: Any) -> Quarantined:
    """The quarantine entry for a record that raised ``exc`` (see ``reason_of``)."""
    reason, detail = reason_and_detail(exc)
    return quarantined(source, where, reason, raw, detail)


@dataclass
class ReadLog:
    """What a reader saw besides records: input fingerprints, skip counts, notes."""

    format: str = ""
    inputs: dict[str, str] = field(default_factory=dict)  # input file -> sha256
    stats: Counter[str] = field(default_factory=Counter)  # counted skips (never silent)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def finite(value: int | float) -> float:
    """A number as a finite float; NaN, infinities and ints beyond float range raise ValueError."""
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"number is not finite ({number}; NaN, infinite or beyond float range)")
    return number


def reason_of(exc: Exception) -> str:
    """A short reason for a quarantine entry (pydantic errors: the first message and its path)."""
    return reason_and_detail(exc)[0]


def reason_and_detail(exc: Exception) -> tuple[str, str | None]:
    """A fixed reason for a quarantine entry, and the variable part (ids, values, list
    positions) as its detail. Pydantic errors: the first message and its path, positions in
    lists as ``*`` (``prompt.*.content``) with the exact path in the detail."""
    if isinstance(exc, Unusable):
        return exc.reason, exc.detail
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            loc = [str(p) for p in first.get("loc", ())]
            where = ".".join("*" if p.isdigit() else p for p in loc)
            exact = ".".join(loc)
            if first.get("type") == "string_unicode":  # pydantic's words for it say less
                return LONE_SURROGATE, f"at {exact}" if exact else None
            if not where:
                return str(first["msg"]), None
            return f"{where}: {first['msg']}", (f"at {exact}" if exact != where else None)
        except (IndexError, KeyError, TypeError):
            pass
    return str(exc) or type(exc).__name__, None


# --------------------------------------------------------------------------- quarantine text

LONE_SURROGATE = "text is not valid Unicode (lone surrogate)"
INVALID_JSON = "invalid JSON"
EXTRA_CELLS = "CSV row has more cells than the header"
HEAD_CHARS = 2000  # of an unreadable file, kept in its quarantine entry
RAW_CHARS = 200  # of an undecodable element's text, kept in its quarantine entry
DETAIL_CHARS = 300  # of a quarantine entry's detail
# Text is kept this far past what is shown and cut only after PII scrubbing: an e-mail or
# IBAN cut in half is no longer recognised, and its first half would be written.
SCRUB_MARGIN = 1000


class LoneSurrogate(ValueError):
    """JSON that decodes to a string holding half of a UTF-16 pair (``"\\ud83d"``: legal
    JSON, but no UTF-8 text); ``value`` is the decoded value, ``at`` the path to the string."""

    def __init__(self, value: Any, at: str):
        super().__init__(f"{LONE_SURROGATE} at {at}")
        self.value, self.at = value, at


def window(text: str, shown: int = RAW_CHARS) -> str:
    """The part of ``text`` to keep for a quarantine entry that shows ``shown`` characters."""
    return text[: shown + SCRUB_MARGIN]


def detail_of(value: Any) -> str:
    """``repr(value)`` for a detail, long enough to be cut only after scrubbing."""
    return window(repr(value), DETAIL_CHARS)


def shown(raw: Any) -> Any:
    """The raw value of a ``clip`` entry cut to what is shown (after scrubbing)."""
    if isinstance(raw, str):
        return raw[:RAW_CHARS]
    if isinstance(raw, dict):  # an unreadable file: its head and the text at the error
        cut = {"head": HEAD_CHARS, "near_error": RAW_CHARS}
        return {k: v[: cut[k]] if k in cut and isinstance(v, str) else v for k, v in raw.items()}
    return raw


def lone_surrogate_at(value: Any) -> str | None:
    """The path (``data[3].output``) to the first string or key holding a lone surrogate
    (which Python's json decodes from ``"\\ud83d"``, and no UTF-8 writer accepts)."""
    try:  # in C, for the usual answer (none); the walk below builds a path per value
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    except (TypeError, ValueError, RecursionError):  # not JSON data: walk it
        pass
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:  # iterative: values nest as deep as the parser allows
        path, v = stack.pop()
        if isinstance(v, str):
            if not _encodable(v):
                return path or "the top level"
        elif isinstance(v, dict):
            for k, item in reversed(v.items()):
                if isinstance(k, str) and not _encodable(k):
                    return f"{path}.<key>".lstrip(".")
                stack.append((f"{path}.{k}".lstrip("."), item))
        elif isinstance(v, list | tuple):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(v))))
    return None


def without_surrogates(value: Any) -> Any:
    """``value`` with each lone surrogate replaced by U+FFFD (``value`` itself when it has
    none), so that it can be scrubbed and written as UTF-8."""
    if lone_surrogate_at(value) is None:
        return value
    text = json.dumps(_plain(value), ensure_ascii=False)
    return json.loads(re.sub("[\ud800-\udfff]", "\ufffd", text))


def _plain(value: Any, depth: int = 200) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v, depth - 1) for k, v in value.items()} if depth else "..."
    if isinstance(value, list | tuple):
        return [_plain(v, depth - 1) for v in value] if depth else "..."
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str | int | bool) or value is None:
        return value
    return str(value)


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
