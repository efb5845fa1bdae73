"""The ingest stage: pull or read every feedback source, derive rows, write, fingerprint.

Writes into ``out``: ``sft.jsonl``, ``preference.jsonl``, ``kto.jsonl`` (training),
``heldout/{sft,preference,kto}.jsonl`` (evaluation), ``quarantine.jsonl`` (every unusable
record with source, location, reason and raw value), ``manifest.json`` (counts per source,
output and drop reason; annotator disagreements; PII findings per entity; input fingerprints;
watermarks of live pulls; sha256 of each output) and ``README.md`` (a dataset card).

Everything streams: readers yield one record at a time, rows are written as they are derived,
and what must be remembered across records (joins, duplicate keys) lives in a scratch database.
PII is scrubbed before anything is written. Outputs are complete before the quarantine threshold
is checked, so a failing run still leaves everything for inspection (without ``.complete``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from feinschliff.artifacts import COMPLETE, DatasetRef, mark_complete, write_json
from feinschliff.ingest.credentials import MissingCredentials
from feinschliff.ingest.decontam import MissingEvalSet, find_eval_sets
from feinschliff.ingest.detect import UnknownExport, open_export
from feinschliff.ingest.langfuse_parallel import PreparedRecords
from feinschliff.ingest.outputs import write_card
from feinschliff.ingest.records import FeedbackRecord, ReadLog
from feinschliff.ingest.rows import RowPipeline
from feinschliff.ingest.scratch import Scratch
from feinschliff.pii import PiiError, key_fingerprint, load_key
from feinschliff.specs.feedback import FeedbackSource, FeedbackSpec, LangfusePull

log = logging.getLogger(__name__)
PROGRESS_SECONDS = 10.0


class IngestError(RuntimeError):
    """Unreadable source, missing credentials, or too much of the feedback was quarantined."""


class InvalidSource(IngestError):
    """A source path that does not exist or matches no known export format."""


def run_ingest(spec: FeedbackSpec, out: Path, *, eval_tasks: Sequence[str] = ()) -> DatasetRef:
    """Run the stage; ``eval_tasks`` (the recipe's ``evaluate.tasks``) join the eval sets that
    rows are decontaminated against."""
    out.mkdir(parents=True, exist_ok=True)
    (out / COMPLETE).unlink(missing_ok=True)
    try:
        key = load_key(spec.pii.key_secret) if spec.pii.mode == "pseudonymize" else None
    except PiiError as exc:
        raise IngestError(str(exc)) from exc
    names = [*eval_tasks, *spec.decontamination.eval_sets]
    try:
        eval_sets = find_eval_sets(names if spec.decontamination.enabled else [])
    except MissingEvalSet as exc:
        raise IngestError(str(exc)) from exc

    sources: list[dict[str, Any]] = []
    with Scratch() as scratch:
        pipeline = RowPipeline(out, spec, scratch, key, eval_sets)
        try:
            for source in spec.sources:
                sources.append(_ingest_source(source, spec, scratch, pipeline))
            pipeline.finish()
        except BaseException:
            pipeline.abort()
            raise
        digests = pipeline.close()

    counts = pipeline.counts()
    records = sum(s["records"] for s in sources)
    quarantined = sum(s["quarantined"] for s in sources)
    total = records + quarantined
    manifest: dict[str, Any] = {
        "stage": "ingest",
        "sources": sources,
        "counts": counts,
        "drops": dict(sorted((pipeline.drops + _source_stats(sources)).items())),
        "disagreements": dict(sorted(pipeline.disagreements.items())),
        "quarantined_share": round(quarantined / total, 4) if total else 0.0,
        "pii": {
            "mode": spec.pii.mode,
            "key_fingerprint": key_fingerprint(key) if key else None,
            "found": dict(sorted(pipeline.pii_found.items())),
            "by_file": {
                k: dict(sorted(v.items())) for k, v in sorted(pipeline.pii_by_file.items())
            },
        },
        "dedup": spec.dedup.model_dump(),
        "decontamination": {
            "ngram": spec.decontamination.ngram,
            "eval_sets": sorted(eval_sets.files),
            "unchecked": eval_sets.unchecked,
            "inputs": decontam.inputs if (decontam := pipeline.context.decontaminator) else {},
            "dropped_by_eval_set": dict(sorted(pipeline.contamination.items())),
        },
        "rules": spec.rules.model_dump(),
        "heldout_fraction": spec.heldout_fraction,
        "notes": [n for s in sources for n in s["notes"]],
        "sha256": digests,
    }
    write_json(out / "manifest.json", manifest)
    write_card(out, manifest)
    if total and quarantined / total > spec.max_quarantine_fraction:
        raise IngestError(
            f"{quarantined} of {total} records quarantined ({quarantined / total:.1%} > "
            f"max_quarantine_fraction {spec.max_quarantine_fraction:.1%}); "
            f"see {out / 'quarantine.jsonl'}"
        )
    if not any(counts[f] for f in ("sft.jsonl", "preference.jsonl", "kto.jsonl")):
        raise IngestError("no training rows derived from the feedback; see manifest.json drops")
    digest = mark_complete(out, stage="ingest")
    return DatasetRef(path=str(out), sha256=digest)


def _ingest_source(
    source: FeedbackSource, spec: FeedbackSpec, scratch: Scratch, pipeline: RowPipeline
) -> dict[str, Any]:
    pulled: dict[str, Any] | None = None
    if source.pull is not None:
        from feinschliff.ingest.pull import EmptySnapshot, pull_source

        try:
            result = pull_source(source)
        except (MissingCredentials, EmptySnapshot) as exc:
            raise IngestError(str(exc)) from exc
        path = result.mirror
        pulled = {
            "fetched": result.fetched,
            "watermark_before": result.watermark_before,
            "watermark_after": result.watermark_after,
        }
    else:
        assert source.path is not None
        path = Path(source.path)
    read_log = ReadLog()
    log.info("reading %s feedback from %s", source.kind, path)
    try:
        read = open_export(
            source.kind,
            path,
            read_log,
            spec.rules,
            scratch,
            pipeline.submit,
            mirror=source.pull is not None,
            # scores are pulled for every observation, observations only by that name
            partial=isinstance(source.pull, LangfusePull) and source.pull.name is not None,
        )
    except UnknownExport as exc:
        raise InvalidSource(str(exc)) from exc
    n_records = n_quarantined = 0
    started = last = time.monotonic()
    for item in read.items:
        if isinstance(item, FeedbackRecord):
            n_records += 1
            pipeline.add_record(item)
        elif isinstance(item, PreparedRecords):
            n_records += item.records
            pipeline.add_prepared(item.batch)
        else:
            n_quarantined += 1
            pipeline.add_quarantined(item)
        if time.monotonic() - last >= PROGRESS_SECONDS:  # large exports take minutes
            last = time.monotonic()
            log.info(
                "%s: %s records read (%s/s), %s quarantined",
                source.kind,
                f"{n_records:,}",
                f"{n_records / (last - started):,.0f}",
                f"{n_quarantined:,}",
            )
    log.info(
        "%s: %s records, %s quarantined in %.1f s",
        source.kind,
        f"{n_records:,}",
        f"{n_quarantined:,}",
        time.monotonic() - started,
    )
    return {
        "kind": source.kind,
        "path": str(path),
        "format": read.format,
        "records": n_records,
        "quarantined": n_quarantined,
        "skipped": dict(sorted(read_log.stats.items())),
        "notes": read_log.notes,
        "pull": pulled,
        "inputs": read_log.inputs,
    }


def _source_stats(sources: list[dict[str, Any]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for s in sources:
        total.update(s["skipped"])
    return total
