"""The ingest stage: read every feedback source, derive rows, split, write, fingerprint.

Writes into ``out``: ``sft.jsonl``, ``preference.jsonl`` (training), ``heldout/sft.jsonl``,
``heldout/preference.jsonl`` (evaluation), ``quarantine.jsonl`` (every unusable record with
source, location, reason and raw value) and ``manifest.json`` (counts per source, output and
drop reason; input fingerprints; sha256 of each output). Outputs are written before the
quarantine threshold is checked, so a failing run still leaves everything for inspection.

Not here yet: PII scrubbing, near-duplicate detection, live pulls (see the ingest issue).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from feinschliff.artifacts import DatasetRef, mark_complete, sha256_file, write_json
from feinschliff.ingest.argilla import is_argilla_disk_export, read_argilla_disk
from feinschliff.ingest.derive import derive_rows
from feinschliff.ingest.langfuse import is_langfuse_pages, read_langfuse_pages
from feinschliff.ingest.records import ReadResult
from feinschliff.recipe import FeedbackSource, FeedbackSpec

log = logging.getLogger(__name__)


class IngestError(RuntimeError):
    """Unreadable source, or too much of the feedback was quarantined."""


def read_source(source: FeedbackSource) -> ReadResult:
    path = Path(source.path)
    if not path.exists():
        raise IngestError(f"feedback source {path} does not exist")
    if source.kind == "argilla":
        if not is_argilla_disk_export(path):
            raise IngestError(f"{path}: not an Argilla to_disk export ({_describe(path)})")
        return read_argilla_disk(path)
    if not is_langfuse_pages(path):
        raise IngestError(
            f"{path}: no Langfuse observations/scores pages found ({_describe(path)})"
        )
    return read_langfuse_pages(path)


def _describe(path: Path) -> str:
    if path.is_file():
        return f"found a file of {path.stat().st_size} bytes"
    names = sorted(p.name for p in path.iterdir())[:8]
    return f"found {names}" if names else "found an empty directory"


def run_ingest(spec: FeedbackSpec, out: Path) -> DatasetRef:
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for source in spec.sources:
        log.info("reading %s export %s", source.kind, source.path)
        results.append((source, read_source(source)))

    records = [r for _, res in results for r in res.records]
    quarantined = [q for _, res in results for q in res.quarantined]
    sft, pref, drops = derive_rows(records, spec.rules)
    sft, n_dup_sft = dedup(sft, ("messages",))
    pref, n_dup_pref = dedup(pref, ("prompt", "chosen", "rejected"))
    drops["duplicate_sft_row"] += n_dup_sft
    drops["duplicate_preference_row"] += n_dup_pref
    for q in quarantined:
        drops[f"quarantined: {q.reason}"] += 1

    train_sft, held_sft = split(sft, spec.heldout_fraction, spec.seed, "messages")
    train_pref, held_pref = split(pref, spec.heldout_fraction, spec.seed, "prompt")
    files = {
        "sft.jsonl": train_sft,
        "preference.jsonl": train_pref,
        "heldout/sft.jsonl": held_sft,
        "heldout/preference.jsonl": held_pref,
        "quarantine.jsonl": [q.model_dump() for q in quarantined],
    }
    for name, rows in files.items():
        write_jsonl(out / name, rows)

    total = len(records) + len(quarantined)
    manifest: dict[str, Any] = {
        "stage": "ingest",
        "sources": [
            {
                "kind": src.kind,
                "path": src.path,
                "records": len(res.records),
                "quarantined": len(res.quarantined),
                "inputs": res.inputs,
            }
            for src, res in results
        ],
        "counts": {name: len(rows) for name, rows in files.items()},
        "drops": dict(sorted(drops.items())),
        "quarantined_share": round(len(quarantined) / total, 4) if total else 0.0,
        "notes": [
            "Argilla to_disk exports carry no response status: all responses counted as submitted."
        ]
        if any(s.kind == "argilla" for s in spec.sources)
        else [],
        "sha256": {name: sha256_file(out / name) for name in files},
    }
    write_json(out / "manifest.json", manifest)
    digest = mark_complete(out, stage="ingest")
    if total and len(quarantined) / total > spec.max_quarantine_fraction:
        raise IngestError(
            f"{len(quarantined)} of {total} records quarantined "
            f"({len(quarantined) / total:.1%} > max_quarantine_fraction "
            f"{spec.max_quarantine_fraction:.1%}); see {out / 'quarantine.jsonl'}"
        )
    if not train_sft and not train_pref:
        raise IngestError("no training rows derived from the feedback; see manifest.json drops")
    return DatasetRef(path=str(out), sha256=digest)


def _norm(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return " ".join(text.lower().split())


def dedup(rows: list[dict[str, Any]], keys: Iterable[str]) -> tuple[list[dict[str, Any]], int]:
    """Exact dedup on whitespace/case-normalised content; keeps the first occurrence."""
    keys = tuple(keys)
    seen: set[str] = set()
    kept = []
    for row in rows:
        h = hashlib.sha256(_norm([row[k] for k in keys]).encode()).hexdigest()
        if h not in seen:
            seen.add(h)
            kept.append(row)
    return kept, len(rows) - len(kept)


def split(
    rows: list[dict[str, Any]], fraction: float, seed: int, key: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Deterministic held-out split by prompt, so one prompt never lands on both sides."""
    train, held = [], []
    for row in rows:
        prompt = row[key][:-1] if key == "messages" else row[key]
        h = hashlib.sha256(f"{seed}:{_norm(prompt)}".encode()).digest()
        (held if int.from_bytes(h[:8], "big") / 2**64 < fraction else train).append(row)
    return train, held


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
