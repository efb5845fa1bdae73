"""Read Langfuse observations joined with their scores (API pages, JSONL, UI observation exports).

Input files hold observation rows (``GET /api/public/v2/observations``, the v1
``/api/public/observations``, the UI "observations" export) and score rows (``GET
/api/public/v3/scores``, v1/v2 ``/api/public/scores``), as API pages ``{"data": [...], "meta"}``,
JSON arrays, JSONL or CSV; rows are recognised by their keys, not by file names.

The join streams with a bounded memory: score files are read first and their rows stored in
the scratch database; then every observation file is read once, and each chunk of 1000 rows
fetches its scores with one query. A score attaches to its observation (v3 ``subject.kind ==
"observation"``, v1/v2 ``observationId``) or, for a trace-level score, to the trace's last
GENERATION: generations of traces with trace-level scores wait in the scratch database until
all observations are read. v2 rows carry ``input``/``output`` as JSON *strings* (FACTS 10.2.1), decoded here.

Score mapping: BOOLEAN -> thumbs up/down of the observation's output; CORRECTION -> a human
correction of it (text in ``value`` for v3, ``stringValue`` for v1/v2); NUMERIC, CATEGORICAL
and TEXT scores carry no training signal here and are counted. UI exports flatten scores into
one column per score name (data type lost): the columns named in ``rules.thumbs_scores`` are
thumbs. Generations without any feedback are counted, not turned into records.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from feinschliff.ingest.jsonio import Broken, dumps, loads
from feinschliff.ingest.langfuse_rows import (
    Item,
    answer_text,
    column_votes,
    iter_rows,
    messages,
    quarantine,
    row_kind,
)
from feinschliff.ingest.records import FeedbackRecord, ReadLog, Vote, reason_of
from feinschliff.ingest.scratch import Scratch
from feinschliff.specs.feedback import DerivationRules

ERRORS = (ValueError, TypeError, KeyError, ValidationError)
CHUNK = 1000  # observation rows per score lookup


def read_observations(
    files: list[Path],
    log: ReadLog,
    rules: DerivationRules,
    scratch: Scratch,
    score_files: set[Path],
) -> Iterator[Item]:
    """Score files first (their rows are stored), then every observation once."""
    scores, seen, deferred = scratch.name("scores"), scratch.name("seen"), scratch.name("deferred")
    db = scratch.db
    db.execute(
        f"CREATE TABLE {scores} (id TEXT PRIMARY KEY, obs TEXT, trace TEXT, ts TEXT, "
        "location TEXT, payload BLOB)"
    )
    db.execute(f"CREATE INDEX {scores}_obs ON {scores}(obs)")
    db.execute(f"CREATE INDEX {scores}_trace ON {scores}(trace) WHERE obs IS NULL")
    db.execute(f"CREATE TABLE {seen} (obs TEXT PRIMARY KEY) WITHOUT ROWID")
    db.execute(
        f"CREATE TABLE {deferred} (seq INTEGER PRIMARY KEY, trace TEXT, start TEXT, where_ TEXT, row BLOB)"
    )
    db.execute(f"CREATE INDEX {deferred}_trace ON {deferred}(trace, start, seq)")
    join = _Join(db, scores, seen, deferred, log, rules)

    ordered = sorted(files, key=lambda f: f not in score_files)  # scores before observations
    for f in ordered:
        chunk: list[tuple[str, dict[str, Any]]] = []
        for where, row in iter_rows(f, log):
            kind = row_kind(row) if not isinstance(row, Broken) else None
            if kind == "score":
                _store_score(db, scores, where, row, log)
            elif kind == "observation":
                chunk.append((where, row))
                if len(chunk) >= CHUNK:
                    yield from join.observations(chunk)
                    chunk = []
            else:
                yield _unknown(where, row)
        yield from join.observations(chunk)
    yield from join.deferred_traces()

    orphans = db.execute(
        f"SELECT location, payload FROM {scores} s WHERE (s.obs IS NOT NULL AND NOT EXISTS "
        f"(SELECT 1 FROM {seen} WHERE obs = s.obs)) OR (s.obs IS NULL AND NOT EXISTS "
        f"(SELECT 1 FROM {deferred} d WHERE d.trace = s.trace)) ORDER BY location"
    )
    for where, payload in orphans.fetchall():
        yield quarantine(where, "score refers to no known generation", loads(payload))
    scratch.commit()


class _Join:
    """Attaches stored scores to observations, a chunk of rows per query."""

    def __init__(
        self, db: Any, scores: str, seen: str, deferred: str, log: ReadLog, rules: DerivationRules
    ):
        self.db, self.scores, self.seen, self.deferred = db, scores, seen, deferred
        self.log, self.rules = log, rules

    def observations(self, chunk: list[tuple[str, dict[str, Any]]]) -> Iterator[Item]:
        gens = []
        for where, row in chunk:
            if row.get("type") == "GENERATION":
                gens.append((where, row))
            else:
                self.log.stats["langfuse_not_a_generation"] += 1
        if not gens:
            return
        ids = [str(r.get("id")) for _, r in gens]
        marks = ",".join("?" * len(ids))
        known = {
            o
            for (o,) in self.db.execute(f"SELECT obs FROM {self.seen} WHERE obs IN ({marks})", ids)
        }
        fresh = []
        for (where, row), obs_id in zip(gens, ids, strict=True):
            if obs_id in known:
                self.log.stats["langfuse_observation_seen_twice"] += 1  # overlapping pulls/pages
            else:
                known.add(obs_id)
                fresh.append((where, row))
        self.db.executemany(
            f"INSERT INTO {self.seen} VALUES (?)", [(str(r.get("id")),) for _, r in fresh]
        )
        gens = fresh
        if not gens:
            return
        by_obs = self._lookup("obs", [str(r.get("id")) for _, r in gens])
        traced = set(self._lookup("trace", [str(r.get("traceId")) for _, r in gens], ids_only=True))
        for where, row in gens:
            if str(row.get("traceId")) in traced:  # wait until the trace's last generation is known
                self.db.execute(
                    f"INSERT INTO {self.deferred} (trace, start, where_, row) VALUES (?, ?, ?, ?)",
                    (str(row.get("traceId")), str(row.get("startTime")), where, dumps(row)),
                )
                continue
            yield from self._emit(where, row, by_obs.get(str(row.get("id")), []))

    def deferred_traces(self) -> Iterator[Item]:
        traces = self.db.execute(
            f"SELECT DISTINCT trace FROM {self.deferred} ORDER BY trace"
        ).fetchall()
        for (trace,) in traces:
            rows = self.db.execute(
                f"SELECT where_, row FROM {self.deferred} WHERE trace = ? ORDER BY start, seq",
                (trace,),
            ).fetchall()
            on_trace = [
                loads(p)
                for (p,) in self.db.execute(
                    f"SELECT payload FROM {self.scores} WHERE obs IS NULL AND trace = ? ORDER BY ts, id",
                    (trace,),
                )
            ]
            parsed = [(w, loads(r)) for w, r in rows]
            by_obs = self._lookup("obs", [str(r.get("id")) for _, r in parsed])
            for i, (where, row) in enumerate(parsed):
                own = by_obs.get(str(row.get("id")), [])
                yield from self._emit(where, row, own + (on_trace if i == len(parsed) - 1 else []))

    def _lookup(self, column: str, keys: list[str], ids_only: bool = False) -> Any:
        if ids_only:
            found = self.db.execute(
                f"SELECT DISTINCT trace FROM {self.scores} WHERE obs IS NULL AND trace IN "
                f"({','.join('?' * len(keys))})",
                keys,
            )
            return [t for (t,) in found]
        grouped: dict[str, list[dict[str, Any]]] = {}
        query = (
            f"SELECT obs, payload FROM {self.scores} WHERE obs IN ({','.join('?' * len(keys))}) "
            "ORDER BY ts, id"
        )
        for obs, payload in self.db.execute(query, keys):
            grouped.setdefault(obs, []).append(loads(payload))
        return grouped

    def _emit(
        self, where: str, row: dict[str, Any], attached: list[dict[str, Any]]
    ) -> Iterator[Item]:
        try:
            votes = _score_votes(attached, row, self.log) + column_votes(row, self.rules)
        except ERRORS as exc:
            yield quarantine(where, reason_of(exc), row)
            return
        if not votes:
            self.log.stats["langfuse_generation_without_feedback"] += 1
            return
        try:
            yield observation_record(row, votes, where)
        except ERRORS as exc:
            yield quarantine(where, reason_of(exc), row)


def _unknown(where: str, row: Any) -> Item:
    if isinstance(row, Broken):
        return quarantine(where, row.reason, row.raw)
    return quarantine(where, "not a Langfuse observation or score row", row)


def _store_score(db: Any, table: str, where: str, score: dict[str, Any], log: ReadLog) -> None:
    subject = score.get("subject") if isinstance(score.get("subject"), dict) else {}
    obs = subject.get("id") if subject.get("kind") == "observation" else None
    obs = obs or score.get("observationId")
    trace = subject.get("traceId") or (
        subject.get("id") if subject.get("kind") == "trace" else None
    )
    trace = trace or score.get("traceId")
    score_id = str(score.get("id") or where)
    db.execute(
        f"INSERT OR REPLACE INTO {table} VALUES (?, ?, ?, ?, ?, ?)",
        (
            score_id,
            str(obs) if obs else None,
            str(trace) if trace else None,
            str(score.get("timestamp") or ""),
            where,
            dumps(score),
        ),
    )


def _score_votes(scores: list[dict[str, Any]], row: dict[str, Any], log: ReadLog) -> list[Vote]:
    votes = []
    for s in scores:
        vote = score_vote(s, row.get("userId"))
        if vote is None:
            log.stats[f"langfuse_score_{s.get('dataType')}_not_used"] += 1
        else:
            votes.append(vote)
    return votes


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
            up = value >= 0.5
        else:
            raise ValueError(f"BOOLEAN score {score.get('id')} has no usable value")
        return Vote(kind="thumbs", annotator=who, answer="output", value=up, timestamp=stamp)
    if kind == "CORRECTION":
        text = value if isinstance(value, str) else score.get("stringValue")
        if isinstance(text, str) and text.strip():
            return Vote(
                kind="correction", annotator=who, answer="output", value=text, timestamp=stamp
            )
        raise ValueError(f"CORRECTION score {score.get('id')} has no text")
    return None


def observation_record(row: dict[str, Any], votes: list[Vote], where: str) -> FeedbackRecord:
    answer = answer_text(row.get("output"))
    if not answer.strip():
        raise ValueError("observation output is empty")
    return FeedbackRecord(
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
