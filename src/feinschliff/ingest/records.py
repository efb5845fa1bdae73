"""The canonical feedback record every reader produces, and the quarantine entry.

Readers turn tool-specific exports into ``FeedbackRecord`` objects; derivation rules turn
records into training rows. A record keeps its provenance (source, ids, annotators, times, the
place it was read from) so every training row can be traced back to the feedback it came from.
Readers yield records and ``Quarantined`` entries one at a time and note what they skipped in a
``ReadLog``; nothing is collected in memory.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Source = Literal["argilla", "langfuse"]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str


class Vote(BaseModel):
    """One judgement by one annotator (or end user) about one answer of a record."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["rating", "thumbs", "preference", "ranking", "correction", "reference"]
    annotator: str | None = None
    answer: str | None = Field(None, description="Key of the answer judged (rating, thumbs).")
    value: Any = None
    timestamp: str | None = None


class FeedbackRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: Source
    source_id: str
    location: str = Field("", description="File and position the record was read from.")
    trace_id: str | None = None
    observation_id: str | None = None
    timestamp: str | None = None
    prompt: list[Message] = Field(min_length=1)
    answers: dict[str, str] = Field(min_length=1, description="Answer key -> assistant text.")
    votes: list[Vote] = Field(default_factory=list)

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
            "feedback_at": max(stamps) if stamps else None,
            "location": self.location,
        }


class Quarantined(BaseModel):
    """A record that could not be used, kept with the reason and its raw value."""

    source: str
    location: str
    reason: str
    raw: Any


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


def reason_of(exc: Exception) -> str:
    """A short reason for a quarantine entry (pydantic errors: the first message and its path)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            return f"{where}: {first['msg']}" if where else str(first["msg"])
        except (IndexError, KeyError, TypeError):
            pass
    return str(exc) or type(exc).__name__
