"""The ingest stage: pull or read every feedback source, derive rows, write, fingerprint.

Writes into ``out``: ``sft.jsonl``, ``preference.jsonl``, ``kto.jsonl`` (training),
``heldout/{sft,preference,kto}.jsonl`` (evaluation), ``quarantine.jsonl`` (every unusable
record with source, location, reason and raw value), ``manifest.json`` (counts per source,
output and drop reason; annotator disagreements; PII findings per entity; input fingerprints;
watermarks of live pulls; sha256 of each output) and ``README.md`` (a dataset card).

Everything streams: readers yield one record at a time, rows are written as they are derived,
and what must be remembered across records (joins, duplicate keys) lives in a scratch database.
PII is scrubbed before anything is written. Outputs are complete before the quarantine threshold
is checked, so a failing run still leaves everything for inspection: without ``.complete``,
with ``"status": "failed"`` and the error in ``manifest.json`` and a card that starts with it.
A file that cannot be read to its end (a truncated page) fails the stage whatever the
quarantined share: how many records it held is unknown.
"""

from __future__ import annotations

import errno
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

from feinschliff.artifacts import (
    COMPLETE,
    DatasetRef,
    OutputInUse,
    make_out_dir,
    mark_complete,
    refuse_non_folder,
    write_json,
)
from feinschliff.ingest.credentials import MissingCredentials
from feinschliff.ingest.decontam import MissingEvalSet, find_eval_sets
from feinschliff.ingest.detect import UnknownExport, open_export
from feinschliff.ingest.langfuse_parallel import PreparedRecords
from feinschliff.ingest.outputs import OUTPUTS, write_card
from feinschliff.ingest.records import FeedbackRecord, ReadLog
from feinschliff.ingest.rows import RowPipeline
from feinschliff.ingest.scratch import Scratch
from feinschliff.pii import PiiError, key_fingerprint, load_key
from feinschliff.specs.evaluate import USECASE_TASK
from feinschliff.specs.feedback import FeedbackSource, FeedbackSpec, LangfusePull

log = logging.getLogger(__name__)
PROGRESS_SECONDS = 10.0


class IngestError(RuntimeError):
    """Unreadable source, missing credentials, or too much of the feedback was quarantined."""


class InvalidSource(IngestError):
    """A source path that does not exist or matches no known export format."""


class MissingSecret(IngestError):
    """A pseudonymization key or pull credentials the environment (or a Prefect Secret block)
    does not hold, or a key of the wrong length: configuration, like an unset PREFECT_API_URL."""


def run_ingest(spec: FeedbackSpec, out: Path, *, eval_tasks: Sequence[str] = ()) -> DatasetRef:
    """Run the stage; ``eval_tasks`` (the recipe's ``evaluate.tasks``) join the eval sets that
    rows are decontaminated against.

    ``out`` must be new, empty or an earlier ingest output (replaced); anything else raises
    ``OutputInUse`` before a file is touched. A failed run leaves a ``manifest.json`` with
    ``"status": "failed"`` and the error, a dataset card that says so in its first line, and
    no ``.complete``. Held for the whole stage (``generate.outlock``, as train and generate
    hold theirs): a second ingest into ``out`` is refused at once, naming the holder."""
    _check_out(out)
    with _holding(out):
        return _ingest(spec, out, eval_tasks)


@contextmanager
def _holding(out: Path) -> Iterator[None]:
    """``out``'s lock: two ingests into one folder (a manual one into a scheduled run's
    folder) replaced each other's files mid-write. Busy or impossible: ``OutputInUse``."""
    from feinschliff.generate.outlock import OutputBusy, hold_output

    try:
        with hold_output(out):
            yield
    except OutputBusy as exc:  # also a lock its parent folder cannot hold (read-only)
        raise OutputInUse(str(exc)) from None


def _ingest(spec: FeedbackSpec, out: Path, eval_tasks: Sequence[str]) -> DatasetRef:
    try:
        key = load_key(spec.pii.key_secret) if spec.pii.mode == "pseudonymize" else None
    except PiiError as exc:
        raise MissingSecret(str(exc)) from exc
    names = [*eval_tasks, *spec.decontamination.eval_sets]
    # the use-case task is built from this stage's own held-out split: no data to check against
    own = [n for n in dict.fromkeys(names) if n == USECASE_TASK]
    try:
        checked = [n for n in names if n != USECASE_TASK] if spec.decontamination.enabled else []
        eval_sets = find_eval_sets(checked)
    except MissingEvalSet as exc:
        raise IngestError(str(exc)) from exc
    if spec.pii.mode == "off":
        log.warning(
            "feedback.pii.mode is off: rows are not scanned for PII and may contain it "
            "(e-mail addresses, phone numbers, IBANs, IP addresses, ...); the dataset card says so"
        )
    _replace_earlier_output(out)

    sources: list[dict[str, Any]] = []
    try:
        with Scratch() as scratch:
            pipeline = RowPipeline(out, spec, scratch, key, eval_sets)
            try:
                for index, source in enumerate(spec.sources):
                    try:
                        sources.append(_ingest_source(index, source, spec, scratch, pipeline))
                    except PermissionError as exc:  # an export file this user may not read
                        raise IngestError(
                            f"sources[{index}] ({source.kind}): {exc.filename}: {exc.strerror}"
                        ) from exc
                pipeline.finish()
            except BaseException:
                pipeline.abort()
                raise
            digests = pipeline.close()
    except BaseException as exc:
        _record_failure(out, {"stage": "ingest", "status": "failed", "error": _error_text(exc)})
        raise

    counts = pipeline.counts()
    records = sum(s["records"] for s in sources)
    quarantined = sum(s["quarantined"] for s in sources)
    total = records + quarantined
    manifest: dict[str, Any] = {
        "stage": "ingest",
        "status": "complete",
        "sources": sources,
        "counts": counts,
        "drops": dict(sorted((pipeline.drops + _source_stats(sources)).items())),
        "disagreements": dict(sorted(pipeline.disagreements.items())),
        "quarantined_share": round(quarantined / total, 4) if total else 0.0,
        "pii": {
            "mode": spec.pii.mode,
            "scanned": spec.pii.mode != "off",
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
            # not external eval data: evaluate builds it from this output's heldout/ files
            "own_heldout": {name: OWN_HELDOUT_NOTE for name in own},
            "inputs": decontam.inputs if (decontam := pipeline.context.decontaminator) else {},
            "dropped_by_eval_set": dict(sorted(pipeline.contamination.items())),
        },
        "rules": spec.rules.model_dump(),
        "heldout_fraction": spec.heldout_fraction,
        "notes": [n for s in sources for n in s["notes"]],
        "sha256": digests,
    }
    problems = _failures(sources, counts, quarantined, total, spec, out)
    if problems:
        error = "\n".join(problems)
        rest = {k: v for k, v in manifest.items() if k not in ("stage", "status")}
        _record_failure(out, {"stage": "ingest", "status": "failed", "error": error, **rest})
        raise IngestError(error)
    write_json(out / "manifest.json", manifest)
    write_card(out, manifest)
    digest = mark_complete(out, stage="ingest")
    return DatasetRef(path=str(out), sha256=digest)


OWN_HELDOUT_NOTE = (
    "ingest's own held-out split (heldout/), kept out of the training files by construction: "
    "there is nothing to decontaminate against"
)


def _failures(
    sources: list[dict[str, Any]],
    counts: dict[str, int],
    quarantined: int,
    total: int,
    spec: FeedbackSpec,
    out: Path,
) -> list[str]:
    """Why the written output must not be used; empty when it may."""
    problems = []
    lost = [u for s in sources for u in s["unreadable"]]
    if lost:
        where = "; ".join(f"{u['location']}: {u['reason']} ({u['detail']})" for u in lost)
        problems.append(
            f"{len(lost)} export file(s) could not be read to the end, so an unknown number of "
            f"records is missing (a truncated download or a damaged file?): {where}. Repair or "
            "export them again, or remove them from the source to ingest without them"
        )
    if total and quarantined / total > spec.max_quarantine_fraction:
        problems.append(
            f"{quarantined} of {total} records quarantined ({quarantined / total:.1%} > "
            f"max_quarantine_fraction {spec.max_quarantine_fraction:.1%}); "
            f"see {out / 'quarantine.jsonl'}"
        )
    if not any(counts[f] for f in ("sft.jsonl", "preference.jsonl", "kto.jsonl")):
        problems.append("no training rows derived from the feedback; see manifest.json drops")
    return problems


def _check_out(out: Path) -> None:
    """Refuse an output folder ingest did not write (someone's files, a project root), before
    anything in it is touched; an earlier ingest output is replaced."""
    refuse_non_folder(out)
    # a `.gitkeep` placeholder counts as empty (and stays)
    held = (p for p in out.iterdir() if p.name != ".gitkeep") if out.is_dir() else ()
    if out.is_dir() and not _earlier_output(out) and any(not _empty_dir(p) for p in held):
        raise OutputInUse(
            f"{out} is not empty and is not an earlier ingest output (no manifest.json written "
            "by ingest): choose a new or empty output folder (nothing was deleted or overwritten)"
        )


def _earlier_output(out: Path) -> bool:
    """A folder ingest wrote: its manifest (complete, failed or of a run still in progress
    when it was killed) or its completeness marker says so."""
    for name in ("manifest.json", COMPLETE):
        try:
            data = json.loads((out / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("stage") == "ingest":
            return True
    return False


def _empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def _replace_earlier_output(out: Path) -> None:
    """Remove what an earlier run wrote (a failed rerun must not leave its rows next to a new
    manifest) and claim the folder with a manifest of a run in progress."""
    make_out_dir(out)
    try:
        for name in (COMPLETE, "manifest.json", "README.md", *OUTPUTS):
            (out / name).unlink(missing_ok=True)
            (out / f"{name}.tmp").unlink(missing_ok=True)
        _remove_if_empty(out / "heldout")
        write_json(out / "manifest.json", {"stage": "ingest", "status": "running"})
    except OSError as exc:
        if exc.errno not in REFUSED:
            raise  # a full disk: a failure, not a wrong output path
        # an existing folder on a read-only disk: as make_out_dir says of one it cannot create
        raise OutputInUse(
            f"cannot write to the output folder {out}: {exc.strerror}: choose another output folder"
        ) from exc


# What the OS says of a path this process may not write, whatever is free on the disk.
REFUSED = (errno.EROFS, errno.EACCES, errno.EPERM)


def _remove_if_empty(folder: Path) -> None:
    if _empty_dir(folder):
        folder.rmdir()


def _record_failure(out: Path, manifest: dict[str, Any]) -> None:
    """A failed run's manifest and card; ``.complete`` stays absent, so nothing uses it.
    Best effort: on a full or read-only disk this fails too, which is logged, and the
    error that failed the run is the one raised."""
    try:
        _remove_if_empty(out / "heldout")  # a run that failed before writing rows
        write_json(out / "manifest.json", manifest)
        write_card(out, manifest)
    except OSError as exc:
        with suppress(OSError):
            (out / "manifest.json.tmp").unlink(missing_ok=True)
        log.error(
            "could not record the failure in %s (%s): its manifest.json may still say "
            '"running"; there is no .complete, so nothing uses the folder',
            out,
            exc.strerror or exc,
        )


def _error_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _ingest_source(
    index: int, source: FeedbackSource, spec: FeedbackSpec, scratch: Scratch, pipeline: RowPipeline
) -> dict[str, Any]:
    if source.pull is None and source.path is not None:  # a file source
        return _read_source(index, source, spec, scratch, pipeline, Path(source.path))
    from feinschliff.ingest.pull import EmptySnapshot, PullFailed, pull_source
    from feinschliff.ingest.pull_snapshot import read_pulled

    try:
        result = pull_source(source)
    except MissingCredentials as exc:
        raise MissingSecret(str(exc)) from exc
    except (EmptySnapshot, PullFailed) as exc:
        raise IngestError(str(exc)) from exc
    return read_pulled(result, partial(_read_source, index, source, spec, scratch, pipeline))


def _read_source(
    index: int,
    source: FeedbackSource,
    spec: FeedbackSpec,
    scratch: Scratch,
    pipeline: RowPipeline,
    path: Path,
    pull_notes: Sequence[str] = (),
) -> dict[str, Any]:
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
            mapping=source.mapping,
        )
    except UnknownExport as exc:
        raise InvalidSource(str(exc)) from exc
    n_records = n_quarantined = 0
    unreadable: list[dict[str, Any]] = []
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
            if item.unreadable:  # the rest of a file lost: the stage fails (see _failures)
                log.warning("%s: %s (%s)", item.location, item.reason, item.detail)
                unreadable.append(
                    {"location": item.location, "reason": item.reason, "detail": item.detail}
                )
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
        "unreadable": unreadable,
        "skipped": dict(sorted(read_log.stats.items())),
        # the readers cannot know which source they read: notes say sources[i]
        "notes": [
            n.replace("sources[i]", f"sources[{index}]") for n in [*pull_notes, *read_log.notes]
        ],
        "mapping": source.mapping.model_dump(exclude_none=True),
        "pull": None,
        "inputs": read_log.inputs,
    }


def _source_stats(sources: list[dict[str, Any]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for s in sources:
        total.update(s["skipped"])
    return total
