"""Langfuse observation files read in worker processes: parse, join, derive, prepare.

In a one-process read the parent spends most of its time parsing pages and building records.
Here each observation file goes to a worker of the row pipeline's pool, which parses it, looks
its scores up in the scores database (read-only), builds the records and prepares their rows
exactly as ``prepare`` does. The parent keeps only what needs the whole export's state, in file
order: drop observations seen before (overlapping pages or pulls), park generations of traces
with trace-level scores, count, collect what was skipped (for the notes), and pass the prepared
rows on. The source's ``mapping`` (its prompt template) goes with each task. Results are taken
in submission order, so the output equals the one-process read (a unit test compares them).

Score files come first: parsed in workers, their rows stored by the parent in file order.
An observation file that also holds score rows ends the parallel read (its scores must be
stored before later files are joined): that file and every later one are read in the parent.
A worker returns a whole file's results at once, so only files up to ``WORKER_MAX_BYTES`` go to
workers (API pages are far smaller); a larger one (a UI export, a JSONL dump) is streamed in the
parent in chunks, in its place in the order, so memory stays flat however large a file is.
"""

from __future__ import annotations

import sqlite3
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feinschliff.ingest import prepare
from feinschliff.ingest.jsonio import Broken
from feinschliff.ingest.langfuse import CHUNK, Submit, _Join, _unknown
from feinschliff.ingest.langfuse_inputs import Skips
from feinschliff.ingest.langfuse_rows import iter_rows, row_kind
from feinschliff.ingest.langfuse_scores import INSERT_SCORE, score_row
from feinschliff.ingest.prepare import Batch, TaggedBatch, prepare_tagged
from feinschliff.ingest.records import ReadLog
from feinschliff.specs.feedback import SourceMapping

PARALLEL_MIN_BYTES = 4 << 20  # smaller exports are read in the parent: no worker start-up
LOOKAHEAD = 4  # files in flight
SCORE_LOOKAHEAD = 16  # score files in flight (small pages, cheap to parse)
WORKER_MAX_BYTES = 16 << 20  # larger files are streamed in the parent (see the docstring)


def _fits_worker(path: Path) -> bool:
    return path.stat().st_size <= WORKER_MAX_BYTES


@dataclass
class PreparedRecords:
    """Rows of records that were derived and prepared in a worker (``RowPipeline.add_prepared``)."""

    batch: Batch
    records: int


@dataclass
class FileResult:
    mixed: bool = False  # the file holds score rows: read it in the parent
    # per row, in order: (observation id or None, kind, value, counted stats or None)
    entries: list[tuple[str | None, str, Any, list[str] | None]] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    inputs: dict[str, str] = field(default_factory=dict)
    skips: Skips = field(default_factory=dict)  # names for the notes (``_Join.skips``)
    tagged: TaggedBatch | None = None


_SCORES: dict[str, sqlite3.Connection] = {}


def join_file_in_worker(
    path: Path, scores: Path, mapping: SourceMapping | None = None
) -> FileResult:
    ctx = prepare.worker_context()
    if str(scores) not in _SCORES:
        _SCORES[str(scores)] = sqlite3.connect(f"file:{scores}?mode=ro", uri=True)
    log = ReadLog()
    join = _Join(None, _SCORES[str(scores)], "", "", log, ctx.spec.rules, mapping=mapping)
    result = FileResult()
    records: list[Any] = []

    def indexed(kind: str, value: Any) -> Any:  # a record travels back as its index
        if kind != "record":
            return value
        records.append(value)
        return len(records) - 1

    def flush(chunk: list[tuple[str, dict[str, Any]]]) -> None:
        for obs_id, kind, value, stats in join.outcomes(join.generations(chunk, log.stats)):
            if kind == "several":
                value = [(k, indexed(k, v)) for k, v in value]
            else:
                value = indexed(kind, value)
            result.entries.append((obs_id, kind, value, stats or None))

    chunk: list[tuple[str, dict[str, Any]]] = []
    for where, row in iter_rows(path, log):
        kind = row_kind(row) if not isinstance(row, Broken) else None
        if kind == "score":
            return FileResult(mixed=True)
        if kind == "observation":
            chunk.append((where, row))
            if len(chunk) >= CHUNK:
                flush(chunk)
                chunk = []
        else:
            result.entries.append((None, "quarantine", _unknown(where, row), None))
    flush(chunk)
    result.stats, result.inputs, result.skips = log.stats, log.inputs, join.skips
    result.tagged = prepare_tagged(records, ctx)
    return result


@dataclass
class ScoreRows:
    mixed: bool = False  # the file holds other rows too: read it in the parent
    rows: list[tuple[Any, ...]] = field(default_factory=list)  # scores-table rows
    stats: Counter[str] = field(default_factory=Counter)
    inputs: dict[str, str] = field(default_factory=dict)


def parse_scores_in_worker(path: Path) -> ScoreRows:
    log, result = ReadLog(), ScoreRows()
    for where, row in iter_rows(path, log):
        if isinstance(row, Broken) or row_kind(row) != "score":
            return ScoreRows(mixed=True)
        result.rows.append(score_row(where, row))
    result.stats, result.inputs = log.stats, log.inputs
    return result


def store_scores(files: list[Path], join: _Join, submit: Submit) -> Iterator[Any]:
    """Score files in order: parsed in workers when there are enough, stored here. A file
    that also holds other rows is read here (its observations join the scores stored so far)."""
    serial = sum(f.stat().st_size for f in files) < PARALLEL_MIN_BYTES
    pending: deque[tuple[Path, Future[ScoreRows]]] = deque()
    i = 0
    while i < len(files) or pending:
        while (
            not serial
            and i < len(files)
            and len(pending) < SCORE_LOOKAHEAD
            and _fits_worker(files[i])
        ):
            future = submit(parse_scores_in_worker, files[i])
            if future is None:  # no worker pool (one worker configured)
                serial = True
                break
            pending.append((files[i], future))
            i += 1
        if pending:
            path, future = pending.popleft()
            result = future.result()
            if result.mixed:
                yield from join.read_file(path)
            else:
                join.log.inputs.update(result.inputs)
                join.log.stats.update(result.stats)
                join.sdb.executemany(INSERT_SCORE, result.rows)
        elif i < len(files):
            yield from join.read_file(files[i])
            i += 1


def read_in_workers(files: list[Path], join: _Join, scores: Path, submit: Submit) -> Iterator[Any]:
    """Observation files in order, in workers when the export is large enough."""
    serial = sum(f.stat().st_size for f in files) < PARALLEL_MIN_BYTES
    pending: deque[tuple[int, Future[FileResult]]] = deque()
    i = 0
    while i < len(files) or pending:
        while not serial and i < len(files) and len(pending) < LOOKAHEAD and _fits_worker(files[i]):
            future = submit(join_file_in_worker, files[i], scores, join.mapping)
            if future is None:  # no worker pool (one worker configured)
                serial = True
                break
            pending.append((i, future))
            i += 1
        if pending:
            index, future = pending.popleft()
            result = future.result()
            if result.mixed:  # later files may need this file's scores: read on here
                for _, later in pending:
                    later.cancel()
                pending.clear()
                serial, i = True, index
                continue
            yield from _merge(result, join)
        elif i < len(files):
            yield from join.read_file(files[i])
            i += 1


def _merge(result: FileResult, join: _Join) -> Iterator[Any]:
    """The parent's share of a worker's file: seen-twice, deferral, counts, in row order."""
    log = join.log
    log.inputs.update(result.inputs)
    log.stats.update(result.stats)
    for stat, names in result.skips.items():
        join.skips.setdefault(stat, set()).update(names)
    fresh = iter(join.mark_seen([e[0] for e in result.entries if e[0] is not None]))
    keep: set[int] = set()
    counted: list[str] = []  # the kept rows' counters, added at once (one update per row is slow)
    for obs_id, kind, value, stats in result.entries:
        if obs_id is not None and not next(fresh):
            log.stats["langfuse_observation_seen_twice"] += 1
            continue
        if stats:
            counted += stats
        for each_kind, each in value if kind == "several" else [(kind, value)]:
            if each_kind == "quarantine":
                yield each
            elif each_kind == "deferred":
                join.defer(*each)
            elif each_kind == "record":
                keep.add(each)
    log.stats.update(counted)
    if keep:
        assert result.tagged is not None
        yield PreparedRecords(result.tagged.keep(keep), len(keep))
