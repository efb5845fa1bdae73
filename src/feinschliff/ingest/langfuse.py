"""Read Langfuse observations joined with their scores (API pages, JSONL, UI observation exports).

Input files hold observation rows (``GET /api/public/v2/observations``, the v1
``/api/public/observations``, the UI "observations" export) and score rows (``GET
/api/public/v3/scores``, v1/v2 ``/api/public/scores``), as API pages ``{"data": [...], "meta"}``,
JSON arrays, JSONL or CSV; rows are recognised by their keys, not by file names.

The join streams with a bounded memory: score files are read first and their rows stored in
the scratch database; then every observation file is read once, and each chunk of 1000 rows
fetches its scores with one query. A score attaches to its observation (v3 ``subject.kind ==
"observation"``, v1/v2 ``observationId``) or, for a trace-level score, to the trace's last
GENERATION (the latest ``startTime`` as a moment, ``timestamps``): generations of traces with
trace-level scores wait in the scratch database until all observations are read. v2 rows carry ``input``/``output`` as JSON *strings* (FACTS 10.2.1), decoded here.

Score mapping: BOOLEAN named in ``rules.thumbs_scores`` -> thumbs up/down of the observation's
output; CORRECTION -> a human correction of it (text in ``value`` for v3, ``stringValue`` for
v1/v2); BOOLEAN scores of other names (judges), NUMERIC, CATEGORICAL and TEXT scores carry no
training signal here and are counted. Prompts: ``langfuse_inputs`` (tool-call conversations and
input objects with texts besides the prompt are counted and noted, not trained on). UI exports
flatten scores into one column per score name (data type lost): the columns named in
``rules.thumbs_scores`` are thumbs. Generations without any feedback are counted, not turned
into records.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from feinschliff.ingest.bloom import Bloom
from feinschliff.ingest.jsonio import Broken, dumps, loads
from feinschliff.ingest.langfuse_inputs import Skip, Skips, skipped
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
    INSERT_SCORE,
    NO_GENERATION,
    create_scores_db,
    not_thumbs,
    note_skips,
    observation_record,
    score_row,
    score_votes,
    signal,
)
from feinschliff.ingest.langfuse_scores import score_vote as score_vote  # callers use langfuse's
from feinschliff.ingest.records import FeedbackRecord, ReadLog
from feinschliff.ingest.scratch import Scratch, create_index, select_in
from feinschliff.ingest.timestamps import time_key
from feinschliff.specs.feedback import DerivationRules, SourceMapping

Submit = Callable[..., Any]  # runs fn(*args) in a worker process: a Future, or None (no pool)
CHUNK = 1000  # observation rows per score lookup


def read_observations(
    files: list[Path],
    log: ReadLog,
    rules: DerivationRules,
    scratch: Scratch,
    score_files: set[Path],
    parallel: Submit | None = None,
    partial: bool = False,
    mapping: SourceMapping | None = None,
) -> Iterator[Any]:
    """Score files first (their rows are stored), then every observation once.

    ``partial``: the export holds only some observations (a pull filtered by name), so a
    score whose observation is missing is expected, counted, not quarantined.

    With ``parallel`` (a function that runs a task in a worker process, see
    ``langfuse_parallel``), large observation files are parsed, joined, derived and prepared
    in workers, and this generator also yields ``PreparedRecords``."""
    seen, deferred = scratch.name("seen"), scratch.name("deferred")
    db = scratch.db
    db.execute(f"CREATE TABLE {seen} (obs TEXT PRIMARY KEY) WITHOUT ROWID")
    db.execute(
        f"CREATE TABLE {deferred} (seq INTEGER PRIMARY KEY, trace TEXT, start TEXT, where_ TEXT, row BLOB)"
    )
    db.execute(f"CREATE INDEX {deferred}_trace ON {deferred}(trace, start, seq)")
    # Scores live in a database of their own, so worker processes can read it while this
    # process writes the main scratch database.
    scores_path = scratch.dir / f"{scratch.name('scores')}.sqlite"
    sdb = create_scores_db(scores_path)
    join = _Join(db, sdb, seen, deferred, log, rules, partial, mapping)
    try:
        ordered = sorted(files, key=lambda f: f not in score_files)  # scores before observations
        if parallel is None:
            for f in ordered:
                yield from join.read_file(f)
        else:
            from feinschliff.ingest.langfuse_parallel import read_in_workers, store_scores

            yield from store_scores([f for f in ordered if f in score_files], join, parallel)
            join.index_scores()
            sdb.execute("COMMIT")  # the workers read the stored scores
            sdb.execute("BEGIN")
            rest = [f for f in ordered if f not in score_files]
            yield from read_in_workers(rest, join, scores_path, parallel)
        yield from join.deferred_traces()
        yield from join.orphans()
        note_skips(log, join.skips, rules.thumbs_scores)
    finally:
        sdb.close()
    scratch.commit()


class _Join:
    """Attaches stored scores to observations, a chunk of rows per query."""

    def __init__(
        self,
        db: Any,
        sdb: Any,
        seen: str,
        deferred: str,
        log: ReadLog,
        rules: DerivationRules,
        partial: bool = False,  # orphan scores are expected (see read_observations)
        mapping: SourceMapping | None = None,
    ):
        self.db, self.sdb, self.seen, self.deferred = db, sdb, seen, deferred
        self.log, self.rules, self.partial = log, rules, partial
        self.thumbs = frozenset(rules.thumbs_scores)
        self.mapping = mapping  # sent with each worker's task
        self.template = mapping.prompt_template if mapping else None
        self.skips: Skips = {}  # what was skipped, for the notes (workers return theirs)
        self.seen_filter: Bloom | None = None  # built on first use (the parent's join only)
        self.indexed = db is None  # a worker's join reads the parent's indexed database

    def index_scores(self) -> None:
        """Built after the bulk inserts, before the first lookup (one sort, not an insert each)."""
        if not self.indexed:
            create_index(self.sdb, "CREATE INDEX scores_obs ON scores(obs)")
            create_index(self.sdb, "CREATE INDEX scores_trace ON scores(trace) WHERE obs IS NULL")
            self.indexed = True

    def read_file(self, f: Path) -> Iterator[Item]:
        """One file, in this process: store its scores, join its observations."""
        chunk: list[tuple[str, dict[str, Any]]] = []
        stored: list[tuple[Any, ...]] = []
        for where, row in iter_rows(f, self.log):
            kind = row_kind(row) if not isinstance(row, Broken) else None
            if kind == "score":
                stored.append(score_row(where, row))
                if len(stored) >= CHUNK:
                    self.sdb.executemany(INSERT_SCORE, stored)
                    stored = []
            elif kind == "observation":
                chunk.append((where, row))
                if len(chunk) >= CHUNK:
                    # scores earlier in the file join too
                    self.sdb.executemany(INSERT_SCORE, stored)
                    stored = []
                    yield from self.observations(chunk)
                    chunk = []
            else:
                yield _unknown(where, row)
        self.sdb.executemany(INSERT_SCORE, stored)
        yield from self.observations(chunk)

    def observations(self, chunk: list[tuple[str, dict[str, Any]]]) -> Iterator[Item]:
        gens = self.generations(chunk, self.log.stats)
        if not gens:
            return
        fresh = self.mark_seen([str(r.get("id")) for _, r in gens])
        if not all(fresh):
            self.log.stats["langfuse_observation_seen_twice"] += fresh.count(False)
        for _, kind, value, stats in self.outcomes(
            [g for g, f in zip(gens, fresh, strict=True) if f]
        ):
            self.log.stats.update(stats)
            if kind == "deferred":
                self.defer(*value)
            elif kind in ("record", "quarantine"):
                yield value
            elif kind == "several":
                yield from (item for _, item in value)

    @staticmethod
    def generations(chunk: list[tuple[str, dict[str, Any]]], stats: Counter[str]) -> list[Any]:
        gens = []
        for where, row in chunk:
            if row.get("type") == "GENERATION":
                gens.append((where, row))
            else:
                stats["langfuse_not_a_generation"] += 1
        return gens

    def mark_seen(self, ids: list[str]) -> list[bool]:
        """For each observation id in order: first time seen? (overlapping pulls/pages)"""
        if self.seen_filter is None:
            self.seen_filter = Bloom(26)
        maybe = self.seen_filter.might_contain(np.array([hash(i) for i in ids], dtype=np.int64))
        asked = [i for i, m in zip(ids, maybe.tolist(), strict=True) if m]
        known = set(select_in(self.db, f"SELECT obs FROM {self.seen} WHERE obs IN ({{}})", asked))
        fresh, new = [], []
        for obs_id in ids:
            fresh.append(obs_id not in known)
            if obs_id not in known:
                known.add(obs_id)
                new.append((obs_id,))
        self.db.executemany(f"INSERT INTO {self.seen} VALUES (?)", new)
        self.seen_filter.add(np.array([hash(i) for (i,) in new], dtype=np.int64))
        return fresh

    def outcomes(
        self, gens: list[tuple[str, dict[str, Any]]]
    ) -> Iterator[tuple[str, str, Any, list[str]]]:
        """Per generation, in order: (id, kind, value, counted stats); kind is ``deferred``
        (waits for its trace), ``record``, ``quarantine``, ``none`` (no feedback) or
        ``several`` (value: [(kind, item), ...], e.g. a quarantined score and the record)."""
        if not gens:
            return
        by_obs = self._lookup("obs", [str(r.get("id")) for _, r in gens])
        traced = set(self._lookup("trace", [str(r.get("traceId")) for _, r in gens], ids_only=True))
        for where, row in gens:
            obs_id = str(row.get("id"))
            stats: list[str] = []  # the counters this row adds to (a list: one per row is cheap)
            if str(row.get("traceId")) in traced:  # wait until the trace's last generation is known
                start = time_key(row.get("startTime"))  # sorted by time in deferred_traces
                value = (str(row.get("traceId")), start, where, dumps(row))
                yield obs_id, "deferred", value, stats
                continue
            items = [
                ("record" if isinstance(item, FeedbackRecord) else "quarantine", item)
                for item in self._emit(where, row, by_obs.get(obs_id, []), stats)
            ]
            if not items:
                yield obs_id, "none", None, stats
            elif len(items) == 1:
                yield obs_id, *items[0], stats
            else:  # one entry per generation: the parallel merge counts seen-twice per entry
                yield obs_id, "several", items, stats

    def defer(self, trace: str, start: str, where: str, row: bytes) -> None:
        self.db.execute(
            f"INSERT INTO {self.deferred} (trace, start, where_, row) VALUES (?, ?, ?, ?)",
            (trace, start, where, row),
        )

    def deferred_traces(self) -> Iterator[Item]:  # rows were deferred after a lookup: indexed
        """Each deferred trace's generations in time order, a chunk at a time (one agent trace
        can hold 100k generations); the last one also gets the trace-level scores."""
        traces = self.db.execute(f"SELECT DISTINCT trace FROM {self.deferred} ORDER BY trace")
        while part := traces.fetchmany(CHUNK):  # streamed: many traces may wait
            for (trace,) in part:
                yield from self._deferred_trace(trace)

    def _deferred_trace(self, trace: str) -> Iterator[Item]:
        cursor = self.db.execute(
            f"SELECT where_, row FROM {self.deferred} WHERE trace = ? ORDER BY start, seq",
            (trace,),
        )
        rows = cursor.fetchmany(CHUNK)
        while rows:
            following = cursor.fetchmany(CHUNK)  # read ahead: is this chunk's last row the last?
            parsed = [(w, loads(r)) for w, r in rows]
            by_obs = self._lookup("obs", [str(r.get("id")) for _, r in parsed])
            for i, (where, row) in enumerate(parsed):
                attached = by_obs.get(str(row.get("id")), [])
                if not following and i == len(parsed) - 1:
                    attached = attached + self._trace_scores(trace)
                stats: list[str] = []
                yield from self._emit(where, row, attached, stats)
                self.log.stats.update(stats)
            rows = following

    def _trace_scores(self, trace: str) -> list[tuple[str, dict[str, Any]]]:
        return [
            (w, loads(p))
            for w, p in self.sdb.execute(
                "SELECT location, payload FROM scores WHERE obs IS NULL AND trace = ? "
                "ORDER BY ts, id",
                (trace,),
            )
        ]

    def orphans(self) -> Iterator[Item]:
        """Scores whose observation (or, trace-level, whose trace) never came, by location.
        Found in a streamed pass without payloads; only the orphans are then sorted.

        Only a thumbs (a BOOLEAN named in ``rules.thumbs_scores``) or correction score carried
        training signal: it is quarantined (its generation may be missing from the export).
        Others (judge or eval scores, often on spans) and every orphan of a partial export are
        counted."""
        self.sdb.execute("CREATE TEMP TABLE IF NOT EXISTS orphan (r INTEGER PRIMARY KEY)")
        self.sdb.execute("DELETE FROM orphan")
        cursor = self.sdb.execute("SELECT rowid, obs, trace FROM scores")
        while part := cursor.fetchmany(CHUNK):  # streamed: scores grow with the export
            obs = sorted({o for _, o, _ in part if o is not None})
            seen = set(select_in(self.db, f"SELECT obs FROM {self.seen} WHERE obs IN ({{}})", obs))
            traces = sorted({t for _, o, t in part if o is None and t is not None})
            waited = set(
                select_in(
                    self.db,
                    f"SELECT DISTINCT trace FROM {self.deferred} WHERE trace IN ({{}})",
                    traces,
                )
            )
            lost = [
                (r,)
                for r, o, t in part
                if (o is not None and o not in seen) or (o is None and t not in waited)
            ]
            self.sdb.executemany("INSERT INTO temp.orphan VALUES (?)", lost)
        query = (
            "SELECT location, payload FROM scores WHERE rowid IN (SELECT r FROM temp.orphan) "
            "ORDER BY location"
        )
        for where, payload in self.sdb.execute(query).fetchall():
            score = loads(payload)
            kind = score.get("dataType") if isinstance(score, dict) else None
            if self.partial:
                self.log.stats["langfuse_score_outside_pulled_observations"] += 1
            elif signal(score, self.thumbs):
                yield quarantine(where, NO_GENERATION, score)
            else:
                not_thumbs(score, self.skips)
                self.log.stats[f"langfuse_score_{kind}_without_generation"] += 1

    def _lookup(self, column: str, keys: list[str], ids_only: bool = False) -> Any:
        self.index_scores()
        if ids_only:
            found = select_in(
                self.sdb,
                "SELECT DISTINCT trace FROM scores WHERE obs IS NULL AND trace IN ({})",
                keys,
            )
            return found
        grouped: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        query = "SELECT obs, location, payload FROM scores WHERE obs IN ({}) ORDER BY ts, id"
        for obs, where, payload in select_in(self.sdb, query, keys):  # an id's scores: one chunk
            grouped.setdefault(obs, []).append((where, loads(payload)))
        return grouped

    def _emit(
        self,
        where: str,
        row: dict[str, Any],
        attached: list[tuple[str, dict[str, Any]]],
        stats: list[str],
    ) -> Iterator[Item]:
        """``attached``: the observation's scores, each with where it was read."""
        votes, broken = score_votes(attached, row, stats, self.thumbs, self.skips)
        for at, score, exc in broken:  # quarantined alone, where it was read: the rest count
            yield quarantine_exc(at, exc, score)
        try:
            votes += column_votes(row, self.rules)
        except ERRORS as exc:
            yield quarantine_exc(where, exc, row)
            return
        if not votes:
            stats.append("langfuse_generation_without_feedback")
            return
        try:
            yield observation_record(row, votes, where, self.template)
        except Skip as exc:  # valid, but not for training (tool calls, ...): counted
            skipped(exc, stats, self.skips)
        except ERRORS as exc:
            yield quarantine_exc(where, exc, row)


def _unknown(where: str, row: Any) -> Item:
    if isinstance(row, Broken):
        return quarantine_broken(where, row)
    return quarantine(where, "not a Langfuse observation or score row", row)
