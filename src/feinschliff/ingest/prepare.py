"""Per-row work that needs no shared state, run in worker processes: derive, hash, scrub.

For a batch of records (or of already derived rows) ``prepare_records`` / ``prepare_rows``
return, per training row: its output kind and dedup space, the exact-dedup key and the MinHash
signature (both from the *original* text), the eval set it overlaps (if any), the held-out flag,
its annotators, the PII counts, and the row serialised with its texts already scrubbed. The
parent process then only looks keys up in its indexes and writes bytes. Deduplication still
happens before pseudonymization in effect: keys are computed on the original text, and a row
dropped as a duplicate is simply never written.

Thumbs verdicts waiting for a partner travel back unscrubbed (they are paired at the end and
then prepared like any row).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from feinschliff.ingest.decontam import Decontaminator, EvalSets
from feinschliff.ingest.dedup import MinHasher, content_key, normalize, row_text, word_hashes
from feinschliff.ingest.derive import derive_record
from feinschliff.ingest.jsonio import dumps
from feinschliff.ingest.records import FeedbackRecord
from feinschliff.pii import scrub_text
from feinschliff.specs.feedback import FeedbackSpec

Row = dict[str, Any]
CONTENT = {
    "sft": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
}
MESSAGES = {
    "sft": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion"),
}


@dataclass
class Prepared:
    kind: str
    space: str
    key: bytes
    sig: Any  # numpy uint32 array, or None when near-dedup is off
    contaminated_by: str | None
    heldout: bool
    annotators: list[str]
    pii: dict[str, int]
    payload: bytes  # the scrubbed row, serialised


@dataclass
class Batch:
    rows: list[Prepared] = field(default_factory=list)
    thumbs: list[tuple[bytes, int, bytes]] = field(default_factory=list)
    drops: Counter[str] = field(default_factory=Counter)
    disagreements: Counter[str] = field(default_factory=Counter)


@dataclass
class Context:
    """Everything a worker needs; built once per process."""

    spec: FeedbackSpec
    key: str | None
    eval_sets: EvalSets

    def __post_init__(self) -> None:
        dedup = self.spec.dedup
        self.hasher = MinHasher(dedup.num_perm, dedup.shingle_words) if dedup.near else None
        decon = self.spec.decontamination
        self.decontaminator = (
            Decontaminator(self.eval_sets, decon.ngram) if self.eval_sets.files else None
        )


_CONTEXT: Context | None = None


def init_worker(context: Context) -> None:
    global _CONTEXT
    _CONTEXT = context


def worker_context() -> Context:
    assert _CONTEXT is not None, "init_worker was not called"
    return _CONTEXT


def prepare_records_in_worker(records: list[FeedbackRecord]) -> Batch:
    assert _CONTEXT is not None, "init_worker was not called"
    return prepare_records(records, _CONTEXT)


def prepare_rows_in_worker(rows: list[tuple[str, Row]]) -> Batch:
    assert _CONTEXT is not None, "init_worker was not called"
    batch = Batch()
    batch.rows = prepare_rows(rows, _CONTEXT)
    return batch


def prepare_records(records: list[FeedbackRecord], ctx: Context) -> Batch:
    batch = Batch()
    rows: list[tuple[str, Row]] = []
    for record in records:
        derived = derive_record(record, ctx.spec.rules)
        batch.drops.update(derived.drops)
        batch.disagreements.update(derived.disagreements)
        for kind in ("sft", "preference", "kto"):
            rows.extend((kind, row) for row in getattr(derived, kind))
        batch.thumbs.extend(
            (content_key(row, ("prompt",)), int(up), dumps(row)) for up, row in derived.thumbs
        )
    batch.rows = prepare_rows(rows, ctx)
    return batch


@dataclass
class TaggedBatch:
    """A batch whose rows, thumbs and counts remember the record (index) they came from, so
    the parent can still drop a record (e.g. an observation seen twice) after preparation."""

    rows: list[tuple[int, Prepared]] = field(default_factory=list)
    thumbs: list[tuple[int, tuple[bytes, int, bytes]]] = field(default_factory=list)
    drops: list[Counter[str]] = field(default_factory=list)
    disagreements: list[Counter[str]] = field(default_factory=list)

    def keep(self, records: set[int]) -> Batch:
        """The ``Batch`` of the kept records only."""
        batch = Batch()
        batch.rows = [p for i, p in self.rows if i in records]
        batch.thumbs = [t for i, t in self.thumbs if i in records]
        for i in sorted(records):
            batch.drops.update(self.drops[i])
            batch.disagreements.update(self.disagreements[i])
        return batch


def prepare_tagged(records: list[FeedbackRecord], ctx: Context) -> TaggedBatch:
    """``prepare_records`` with every output tagged by its record's index."""
    tagged = TaggedBatch()
    rows: list[tuple[str, Row]] = []
    tags: list[int] = []
    for i, record in enumerate(records):
        derived = derive_record(record, ctx.spec.rules)
        tagged.drops.append(derived.drops)
        tagged.disagreements.append(derived.disagreements)
        for kind in ("sft", "preference", "kto"):
            for row in getattr(derived, kind):
                rows.append((kind, row))
                tags.append(i)
        tagged.thumbs.extend(
            (i, (content_key(row, ("prompt",)), int(up), dumps(row))) for up, row in derived.thumbs
        )
    tagged.rows = list(zip(tags, prepare_rows(rows, ctx), strict=True))
    return tagged


def prepare_rows(rows: list[tuple[str, Row]], ctx: Context) -> list[Prepared]:
    words = [word_hashes(row_text(row)) for _, row in rows]
    sigs = ctx.hasher.signatures_of_words(words) if ctx.hasher and rows else [None] * len(rows)
    out = []
    for (kind, row), w, sig in zip(rows, words, sigs, strict=True):
        hit = ctx.decontaminator.contaminated_by_words(w) if ctx.decontaminator else None
        key = content_key(row, CONTENT[kind])
        held = _heldout(kind, row, ctx.spec)
        annotators = list(row["provenance"]["annotators"])
        found: Counter[str] = Counter()
        if hit is None and ctx.spec.pii.mode != "off":
            for name in MESSAGES[kind]:
                row[name] = [_scrub(m, ctx, found) for m in row[name]]
        space = f"kto:{row['label']}" if kind == "kto" else kind
        payload = dumps(row) if hit is None else b""
        out.append(Prepared(kind, space, key, sig, hit, held, annotators, dict(found), payload))
    return out


def _scrub(message: dict[str, str], ctx: Context, found: Counter[str]) -> dict[str, str]:
    text, counts = scrub_text(message["content"], ctx.spec.pii.mode, ctx.key)
    found.update(counts)
    return {**message, "content": text}


def _heldout(kind: str, row: Row, spec: FeedbackSpec) -> bool:
    """A hash of seed + prompt, so one prompt never lands on both sides of the split."""
    if spec.heldout_fraction <= 0:
        return False
    prompt = row["messages"][:-1] if kind == "sft" else row["prompt"]
    blob = f"{spec.seed}:{normalize(dumps(prompt).decode('utf-8'))}".encode()
    h = hashlib.sha256(blob).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < spec.heldout_fraction
