"""From records to written rows: derive, decontaminate, deduplicate, cap, split, scrub, write.

``RowPipeline`` receives records and quarantine entries one at a time (from the readers) and
writes JSONL incrementally. Records are grouped in batches; each batch is *prepared*
(``prepare``: derivation, hashes, MinHash signatures, eval-set overlap, held-out flag, PII
scrubbing) in worker processes when ``feedback.workers`` allows, with results consumed in
submission order, so the output is the same for any number of workers. The parent then applies,
per row and in order:

1. decontamination (``contaminated_<kind>_row``);
2. exact, then near-duplicate removal within the output kind, across all sources
   (``duplicate_<kind>_row``, ``near_duplicate_<kind>_row``);
3. the per-annotator contribution cap (``annotator_cap``);
4. the write, to the training or held-out file.

Thumbs verdicts wait in the scratch database until all records are read, then thumbs-up and
thumbs-down answers to the same prompt are paired (``derive.pair_thumbs``) and pass the same steps.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from feinschliff.ingest.decontam import EvalSets
from feinschliff.ingest.dedup import Deduplicator
from feinschliff.ingest.derive import pair_thumbs
from feinschliff.ingest.jsonio import loads
from feinschliff.ingest.outputs import OUTPUTS, JsonlSink
from feinschliff.ingest.prepare import (
    Batch,
    Context,
    init_worker,
    prepare_records,
    prepare_records_in_worker,
    prepare_rows,
    prepare_rows_in_worker,
)
from feinschliff.ingest.records import (
    DETAIL_CHARS,
    FeedbackRecord,
    Quarantined,
    shown,
    without_surrogates,
)
from feinschliff.ingest.scratch import Scratch, create_index
from feinschliff.pii import scrub_value
from feinschliff.specs.feedback import FeedbackSpec

log = logging.getLogger(__name__)
BATCH = 256  # records per prepared batch
MAX_WORKERS = 8


class RowPipeline:
    def __init__(
        self,
        out: Path,
        spec: FeedbackSpec,
        scratch: Scratch,
        pii_key: str | None,
        eval_sets: EvalSets,
    ):
        self.spec, self.rules, self.scratch = spec, spec.rules, scratch
        self.mode, self.key = spec.pii.mode, pii_key
        self.context = Context(spec, pii_key, eval_sets)
        self.dedup = Deduplicator(spec.dedup, scratch)
        self.sinks = {name: JsonlSink(out / name) for name in OUTPUTS}
        self.records: list[FeedbackRecord] = []
        self.in_flight: deque[Future[Batch] | Batch] = deque()
        self.workers = spec.workers or min(os.cpu_count() or 1, MAX_WORKERS)
        self.pool: ProcessPoolExecutor | None = None
        self.batches = 0
        self.drops: Counter[str] = Counter()
        self.disagreements: Counter[str] = Counter()
        self.contamination: Counter[str] = Counter()
        self.pii_found: Counter[str] = Counter()
        self.pii_by_file: dict[str, Counter[str]] = {}
        self.per_annotator: Counter[str] = Counter()
        self.thumbs = scratch.name("thumbs")
        scratch.db.execute(
            f"CREATE TABLE {self.thumbs} "
            "(seq INTEGER PRIMARY KEY, pk BLOB, up INTEGER, sole INTEGER, row BLOB)"
        )

    # ------------------------------------------------------------------ input

    def add_record(self, record: FeedbackRecord) -> None:
        self.records.append(record)
        if len(self.records) >= BATCH:
            self._dispatch_records()

    def add_prepared(self, batch: Batch) -> None:
        """Rows prepared elsewhere (a worker that also read them), applied in arrival order."""
        self._dispatch_records()
        self.in_flight.append(batch)
        self._drain(2 * self.workers)

    def submit(self, fn: Any, *args: Any) -> Future[Any] | None:
        """Run ``fn(*args)`` in a worker process (which has this pipeline's context); None when
        the pipeline runs in one process."""
        pool = self._start_pool()
        return None if pool is None else pool.submit(fn, *args)

    def add_quarantined(self, item: Quarantined) -> None:
        # A lone surrogate (in the raw value of some entries) stops the scrubber and UTF-8.
        entry = without_surrogates(item.model_dump())
        found: Counter[str] = Counter()
        entry["reason"] = scrub_value(entry["reason"], self.mode, self.key, found)
        entry["raw"] = scrub_value(entry["raw"], self.mode, self.key, found)
        if item.clip:  # cut only now: PII across the cut was seen whole by the scrubber
            entry["raw"] = shown(entry["raw"])
        if entry["detail"] is None:  # only entries with a variable part (ids, values) have one
            del entry["detail"]
        else:
            detail = scrub_value(entry["detail"], self.mode, self.key, found)
            entry["detail"] = detail[:DETAIL_CHARS]
        self._count_pii("quarantine.jsonl", found)
        self.drops[f"quarantined: {_short(entry['reason'])}"] += 1
        self.sinks["quarantine.jsonl"].write(entry)

    def finish(self) -> None:
        """Drain every batch, pair thumbs across records, drain again."""
        self._dispatch_records()
        self._drain(0)
        if self.rules.thumbs_pairs:
            db = self.scratch.db
            # indexed now, after the inserts: one sort instead of one random insert per row
            create_index(db, f"CREATE INDEX {self.thumbs}_pk ON {self.thumbs}(pk, up, seq)")
            groups = db.execute(
                f"SELECT pk FROM {self.thumbs} GROUP BY pk HAVING MIN(up) = 0 AND MAX(up) = 1 "
                "ORDER BY MIN(seq)"
            ).fetchall()
            # a verdict that was its record's only output and found no partner: a counted drop
            (lone,) = db.execute(
                f"SELECT COUNT(*) FROM {self.thumbs} WHERE sole = 1 AND pk IN "
                f"(SELECT pk FROM {self.thumbs} GROUP BY pk HAVING MIN(up) = MAX(up))"
            ).fetchone()
            query = f"SELECT up, sole, row FROM {self.thumbs} WHERE pk = ? ORDER BY seq"
            pending: list[tuple[str, dict[str, Any]]] = []
            for (pk,) in groups:
                ups: list[tuple[int, dict[str, Any]]] = []
                downs: list[tuple[int, dict[str, Any]]] = []
                for up, sole, row in db.execute(query, (pk,)):
                    (ups if up else downs).append((sole, loads(row)))
                pairs, lone_ups, lone_downs = pair_thumbs(
                    [r for _, r in ups], [r for _, r in downs]
                )
                lone += sum(ups[i][0] for i in lone_ups) + sum(downs[i][0] for i in lone_downs)
                pending.extend(("preference", row) for row in pairs)
                if len(pending) >= BATCH:
                    self._dispatch_rows(pending)
                    pending = []
            self._dispatch_rows(pending)
            self._drain(0)
            if lone:
                self.drops["thumbs_without_partner"] += lone

    def close(self) -> dict[str, str]:
        self._stop_pool()
        self.dedup.close()
        try:
            return {name: sink.close() for name, sink in self.sinks.items()}
        except BaseException:  # a full disk at the last flush: no .tmp stays behind
            self._abort_sinks()
            raise

    def abort(self) -> None:
        """Stop and discard everything; never raises, so the error that aborted the run is
        the one reported. Every sink is aborted, even after one failed to (its ``.tmp`` is
        logged as left behind)."""
        try:
            self._stop_pool(cancel=True)
            self.dedup.close()
        except Exception as exc:  # noqa: BLE001 - the sinks below must go all the same
            log.warning("ingest: stopping the workers after a failure failed too: %s", exc)
        self._abort_sinks()

    def _abort_sinks(self) -> None:
        for sink in self.sinks.values():
            try:
                sink.abort()
            except OSError as exc:
                log.warning("ingest: could not remove %s.tmp: %s", sink.path, exc)

    def counts(self) -> dict[str, int]:
        return {name: sink.rows for name, sink in self.sinks.items()}

    # ------------------------------------------------------------------ batches

    def _dispatch_records(self) -> None:
        records, self.records = self.records, []
        if not records:
            return
        pool = self._pool()
        if pool is None:
            self.in_flight.append(prepare_records(records, self.context))
        else:
            self.in_flight.append(pool.submit(prepare_records_in_worker, records))
        self._drain(2 * self.workers)

    def _dispatch_rows(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        if not rows:
            return
        pool = self._pool()
        if pool is None:
            self.in_flight.append(prepare_rows(rows, self.context))
        else:
            self.in_flight.append(pool.submit(prepare_rows_in_worker, rows))
        self._drain(2 * self.workers)

    def _pool(self) -> ProcessPoolExecutor | None:
        """Worker processes, started with the second batch (small inputs stay in-process)."""
        self.batches += 1
        if self.batches < 2:
            return None
        return self._start_pool()

    def _start_pool(self) -> ProcessPoolExecutor | None:
        if self.workers <= 1:
            return None
        if self.pool is None:
            if self.mode != "off":
                from feinschliff.pii import warm_up

                warm_up()  # forked workers inherit the built Presidio engines
            method = "fork" if sys.platform == "linux" else None
            self.pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context(method),
                initializer=init_worker,
                initargs=(self.context,),
            )
        return self.pool

    def _stop_pool(self, cancel: bool = False) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=cancel)
            self.pool = None

    def _drain(self, keep: int) -> None:
        """Apply finished batches in submission order until at most ``keep`` are in flight."""
        while len(self.in_flight) > keep:
            head = self.in_flight.popleft()
            self._apply(head.result() if isinstance(head, Future) else head)

    def _apply(self, batch: Batch) -> None:
        self.drops.update(batch.drops)
        self.disagreements.update(batch.disagreements)
        if batch.thumbs:
            self.scratch.db.executemany(
                f"INSERT INTO {self.thumbs} (pk, up, sole, row) VALUES (?, ?, ?, ?)", batch.thumbs
            )
        rows = []
        for i, p in enumerate(batch.rows):
            if p.contaminated_by is not None:
                self.drops[f"contaminated_{p.kind}_row"] += 1
                self.contamination[p.contaminated_by] += 1
            else:
                rows.append(i)
        exact = self.dedup.exact_dups([(batch.rows[i].space, batch.rows[i].key) for i in rows])
        fresh = []
        for i, dup in zip(rows, exact, strict=True):
            if dup:
                self.drops[f"duplicate_{batch.rows[i].kind}_row"] += 1
            else:
                fresh.append(i)
        spaces = [batch.rows[i].space for i in fresh]
        near = self.dedup.near_dups_of_batch(
            spaces, None if batch.sigs is None else batch.sigs[fresh]
        )
        for p, is_near in zip([batch.rows[i] for i in fresh], near, strict=True):
            if is_near:
                self.drops[f"near_duplicate_{p.kind}_row"] += 1
            elif self._over_cap(p.annotators):
                self.drops["annotator_cap"] += 1
            else:
                name = f"heldout/{p.kind}.jsonl" if p.heldout else f"{p.kind}.jsonl"
                if p.pii:
                    self._count_pii(name, Counter(p.pii))
                self.sinks[name].write_bytes(p.payload)

    def _over_cap(self, people: list[str]) -> bool:
        cap = self.rules.max_rows_per_annotator
        if cap is None or not people:
            return False
        if all(self.per_annotator[p] >= cap for p in people):
            return True
        self.per_annotator.update(people)
        return False

    def _count_pii(self, name: str, found: Counter[str]) -> None:
        if found:
            self.pii_found.update(found)
            self.pii_by_file.setdefault(name, Counter()).update(found)


def _short(reason: str) -> str:
    """Quarantine reasons as counter keys: without the variable parts (values, ids)."""
    head = reason.split(":")[0] if ": " in reason and len(reason) > 60 else reason
    return head[:80]
