"""The canonical feedback record every reader produces, and the quarantine entry.

Readers turn tool-specific exports into ``FeedbackRecord`` objects; derivation rules turn
records into training rows. A record keeps its provenance (source, ids, annotators, time) so
every training row can be traced back to the feedback it came from.
"""

from __future__ import annotations

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

    kind: Literal["rating", "thumbs", "preference", "ranking", "correction"]
    annotator: str | None = None
    answer: str | None = Field(None, description="Key of the answer judged (rating, thumbs).")
    value: Any = None


class FeedbackRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: Source
    source_id: str
    trace_id: str | None = None
    observation_id: str | None = None
    timestamp: str | None = None
    prompt: list[Message] = Field(min_length=1)
    answers: dict[str, str] = Field(description="Answer key -> assistant text.")
    votes: list[Vote] = Field(default_factory=list)

    @property
    def annotators(self) -> list[str]:
        return sorted({v.annotator for v in self.votes if v.annotator})

    def provenance(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "source_id": self.source_id,
            "trace_id": self.trace_id,
            "observation_id": self.observation_id,
            "annotators": self.annotators,
            "timestamp": self.timestamp,
        }


class Quarantined(BaseModel):
    """A record that could not be used, kept with the reason and its raw value."""

    source: str
    location: str
    reason: str
    raw: Any


class ReadResult(BaseModel):
    records: list[FeedbackRecord] = Field(default_factory=list)
    quarantined: list[Quarantined] = Field(default_factory=list)
    inputs: dict[str, str] = Field(default_factory=dict, description="Input file -> sha256.")
