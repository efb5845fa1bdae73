"""Self-contained Langfuse exports: legacy full traces, UI trace exports, dataset items.

Each row carries everything it needs, so these are read in one streaming pass:

- ``GET /api/public/traces/{id}`` (``TraceWithFullDetails``, FACTS 10.2.2), one trace per file,
  as a JSON array or as JSONL: one record per GENERATION observation; a score with an
  ``observationId`` belongs to that observation, a trace-level score to the trace's last
  generation; a trace without generations is one record of its own input/output. A thumbs or
  correction on a span or an unknown observation is quarantined (as the observation join
  does: "score refers to no known generation"); BOOLEAN scores count as thumbs only when
  named in ``rules.thumbs_scores``.
- UI "traces" batch export rows (CSV, JSON or JSONL; FACTS 10.2.4): the trace's input/output,
  scores flattened into one column per score name (thumbs: ``rules.thumbs_scores``). The
  export has no CORRECTION scores (the server leaves them out), so it yields thumbs only.
- Dataset items (``GET /api/public/dataset-items`` pages, FACTS 10.2.3): an ACTIVE item's
  ``expectedOutput`` is a curated reference answer (SFT); ARCHIVED items are counted, not used.

Prompts come from ``langfuse_inputs`` with the source's ``mapping.prompt_template``; what it
skips (tool calls, input objects with other texts) is counted and noted, not quarantined.

The traces *list* (``GET /api/public/traces``) holds only observation and score ids: its rows
are quarantined with a hint to export full traces instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feinschliff.ingest.jsonio import Broken
from feinschliff.ingest.langfuse_inputs import Skip, Skips, answer_text, messages, skipped
from feinschliff.ingest.langfuse_rows import (
    Item,
    column_votes,
    iter_rows,
    quarantine,
    quarantine_broken,
    quarantine_exc,
    row_kind,
)
from feinschliff.ingest.langfuse_scores import (
    ERRORS,
    NO_GENERATION,
    not_thumbs,
    note_skips,
    observation_record,
    score_vote,
)
from feinschliff.ingest.records import FeedbackRecord, ReadLog, Vote
from feinschliff.ingest.timestamps import time_key
from feinschliff.specs.feedback import DerivationRules, SourceMapping


def read_exports(
    files: list[Path], log: ReadLog, rules: DerivationRules, mapping: SourceMapping | None = None
) -> Iterator[Item]:
    read = _Read(log, rules, mapping.prompt_template if mapping else None)
    for f in files:
        for where, row in iter_rows(f, log):
            if isinstance(row, Broken):
                yield quarantine_broken(where, row)
                continue
            kind = row_kind(row)
            try:
                if kind == "trace_full":
                    yield from _trace(row, where, read)
                elif kind == "trace_export":
                    yield from _trace_export(row, where, read)
                elif kind == "dataset_item":
                    yield from _dataset_item(row, where, read)
                elif kind == "trace_ids":
                    yield quarantine(
                        where,
                        "a traces-list row holds only observation/score ids; export full traces "
                        "(GET /api/public/traces/{id}) or observation and score pages",
                        row,
                    )
                else:
                    yield quarantine(where, "not a Langfuse trace, export or dataset-item row", row)
            except Skip as exc:  # valid, but not for training: counted
                read.skip(exc)
            except ERRORS as exc:
                yield quarantine_exc(where, exc, row)
    note_skips(log, read.skips, rules.thumbs_scores)


@dataclass
class _Read:
    """What every row's reader needs, and what was skipped (for the notes)."""

    log: ReadLog
    rules: DerivationRules
    template: str | None
    skips: Skips = field(default_factory=dict)

    def skip(self, exc: Skip) -> None:
        stats: list[str] = []
        skipped(exc, stats, self.skips)
        self.log.stats.update(stats)


def _trace(trace: dict[str, Any], where: str, read: _Read) -> Iterator[Item]:
    log = read.log
    generations = [
        o for o in trace["observations"] if isinstance(o, dict) and o.get("type") == "GENERATION"
    ]
    last = max(generations, key=lambda o: time_key(o.get("startTime")), default=None)
    attached: dict[str, list[Vote]] = {str(o.get("id")): [] for o in generations}
    if not generations:  # the trace's own input/output is the pair
        attached[str(trace.get("id"))] = []
    for n, score in enumerate(trace.get("scores") or []):
        if not isinstance(score, dict):
            raise ValueError(f"score is a {type(score).__name__}, not an object")
        try:
            vote = score_vote(score, trace.get("userId"), read.rules.thumbs_scores)
        except ERRORS as exc:  # quarantined alone: the other scores still count
            yield quarantine_exc(f"{where}/scores[{n}]", exc, score)
            continue
        if vote is None:
            log.stats[f"langfuse_score_{score.get('dataType')}_not_used"] += 1
            not_thumbs(score, read.skips)
            continue
        target = score.get("observationId") or (last.get("id") if last else trace.get("id"))
        if str(target) not in attached:  # a span's or an unknown observation's: lost signal
            yield quarantine(f"{where}/scores[{n}]", NO_GENERATION, score)
            continue
        attached[str(target)].append(vote)

    if not generations:
        votes = attached[str(trace.get("id"))]
        if votes:
            yield _record(trace, votes, where, trace.get("id"), read.template)
        else:
            log.stats["langfuse_trace_without_feedback"] += 1
        return
    for i, obs in enumerate(generations):
        votes = attached.get(str(obs.get("id")), [])
        if not votes:
            log.stats["langfuse_generation_without_feedback"] += 1
            continue
        here = f"{where}/observations[{i}]"
        try:
            row = {"traceId": trace.get("id"), **obs}
            yield observation_record(row, votes, here, read.template)
        except Skip as exc:
            read.skip(exc)
        except ERRORS as exc:
            yield quarantine_exc(here, exc, obs)


# A UI trace export's own columns (FACTS 10.2.4); every other column is a score name.
TRACE_COLUMNS = frozenset(
    [
        "bookmarked",
        "id",
        "timestamp",
        "name",
        "userId",
        "level",
        "observationCount",
        "latency",
        "release",
        "version",
        "sessionId",
        "input",
        "output",
        "metadata",
        "tags",
        "usage",
        "inputCost",
        "outputCost",
        "totalCost",
    ]
)


def _trace_export(row: dict[str, Any], where: str, read: _Read) -> Iterator[Item]:
    votes = column_votes(row, read.rules)
    if not votes:
        read.log.stats["langfuse_trace_without_feedback"] += 1
        scores = sorted(str(k) for k in row if k not in TRACE_COLUMNS)
        if not any(name in row for name in read.rules.thumbs_scores):
            # a team's own thumbs name: say which columns there are instead of "no feedback"
            read.log.note(
                f"Langfuse UI export without a column named in feedback.rules.thumbs_scores "
                f"({read.rules.thumbs_scores}); its score columns: {', '.join(scores) or 'none'}"
            )
        return
    read.log.note(
        "Langfuse UI exports carry no CORRECTION scores and only averaged score values per "
        f"name; thumbs were read from the columns {read.rules.thumbs_scores}."
    )
    yield _record(row, votes, where, row.get("id"), read.template)


def _dataset_item(item: dict[str, Any], where: str, read: _Read) -> Iterator[Item]:
    log = read.log
    if item.get("status", "ACTIVE") != "ACTIVE":
        log.stats[f"langfuse_dataset_item_{str(item.get('status')).lower()}"] += 1
        return
    expected = item.get("expectedOutput")
    if expected in (None, "", {}):
        log.stats["langfuse_dataset_item_without_expected_output"] += 1
        return
    text = answer_text(expected)
    if not text.strip():
        raise ValueError("dataset item expectedOutput is empty")
    yield FeedbackRecord(
        source="langfuse",
        source_id=str(item["id"]),
        location=where,
        trace_id=_str(item.get("sourceTraceId")),
        observation_id=_str(item.get("sourceObservationId")),
        timestamp=_str(item.get("createdAt")),
        prompt=messages(item.get("input"), read.template),
        answers={"expected_output": text},
        votes=[Vote(kind="reference", answer="expected_output", value=text)],
    )


def _record(
    row: dict[str, Any], votes: list[Vote], where: str, trace_id: Any, template: str | None
) -> FeedbackRecord:
    answer = answer_text(row.get("output"))
    if not answer.strip():
        raise ValueError("trace output is empty")
    return FeedbackRecord(
        source="langfuse",
        source_id=str(row["id"]),
        location=where,
        trace_id=_str(trace_id),
        timestamp=_str(row.get("timestamp")),
        prompt=messages(row.get("input"), template),
        answers={"output": answer},
        votes=votes,
    )


def _str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None
