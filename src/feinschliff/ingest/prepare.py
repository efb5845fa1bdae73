"""Per-row work that needs no shared state, run in worker processes: derive, hash, scrub.

For a batch of records (or of already derived rows) ``prepare_records`` / ``prepare_rows``
return, per training row: its output kind and dedup space, the exact-dedup key and the MinHash
signature (both from the *original* text), the eval set it overlaps (if any), the held-out flag,
its annotators, the PII counts, and the row serialised with its texts already scrubbed. The
parent process then only looks keys up in its indexes and writes bytes. Deduplication still
happens before pseudonymization in effect: keys are computed on the original text, and a row
dropped as a duplicate is simply never written.

Scrubbing covers the row's ``provenance`` too: an id that holds PII (a Langfuse ``userId`` that
is an e-mail address, taken as the annotator of end-user thumbs) becomes its stable token
(``pii.scrub_id``), so one contributor keeps one id across rows for the poisoning scan. The
per-annotator cap (in the parent) and the thumbs pairing (before this) see the original ids.

Thumbs verdicts waiting for a partner travel back unscrubbed (they are paired at the end and
then prepared like any row).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from feinschliff.ingest.decontam import Decontaminator, EvalSets
from feinschliff.ingest.dedup import MinHasher, RowKeys
from feinschliff.ingest.derive import derive_record
from feinschliff.ingest.jsonio import dumps
from feinschliff.ingest.records import FeedbackRecord
from feinschliff.ngrams import row_text, word_hashes
from feinschliff.pii import scrub_id, scrub_location, scrub_text
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


class Prepared(NamedTuple):  # a tuple: batches travel between processes, pickling is cheaper
    kind: str
    space: str
    key: bytes
    contaminated_by: str | None
    heldout: bool
    annotators: list[str]
    pii: dict[str, int]
    payload: bytes  # the scrubbed row, serialised


@dataclass
class Batch:
    rows: list[Prepared] = field(default_factory=list)
    sigs: Any = None  # (rows, num_perm) MinHash signatures, or None when near-dedup is off
    thumbs: list[tuple[bytes, int, int, bytes]] = field(default_factory=list)
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
        self.keys = RowKeys()  # exact-dedup keys and held-out hashes, memoised per message


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
    return prepare_rows(rows, _CONTEXT)


def prepare_records(records: list[FeedbackRecord], ctx: Context) -> Batch:
    return prepare_tagged(records, ctx).keep(set(range(len(records))))


@dataclass
class TaggedBatch:
    """A batch whose rows, thumbs and counts remember the record (index) they came from, so
    the parent can still drop a record (e.g. an observation seen twice) after preparation."""

    rows: list[tuple[int, Prepared]] = field(default_factory=list)
    sigs: Any = None  # aligned with rows, as in ``Batch``
    thumbs: list[tuple[int, tuple[bytes, int, int, bytes]]] = field(default_factory=list)
    # per record with any (most have none: a list of empty Counters is slow to pickle)
    drops: dict[int, Counter[str]] = field(default_factory=dict)
    disagreements: dict[int, Counter[str]] = field(default_factory=dict)

    def keep(self, records: set[int]) -> Batch:
        """The ``Batch`` of the kept records only."""
        batch = Batch()
        kept = [i in records for i, _ in self.rows]
        batch.rows = [p for (_, p), k in zip(self.rows, kept, strict=True) if k]
        batch.sigs = None if self.sigs is None else self.sigs[np.array(kept, dtype=bool)]
        batch.thumbs = [t for i, t in self.thumbs if i in records]
        for i in sorted(records):
            if i in self.drops:
                batch.drops.update(self.drops[i])
            if i in self.disagreements:
                batch.disagreements.update(self.disagreements[i])
        return batch


def prepare_tagged(records: list[FeedbackRecord], ctx: Context) -> TaggedBatch:
    """``prepare_records`` with every output tagged by its record's index."""
    tagged = TaggedBatch()
    rows: list[tuple[str, Row]] = []
    tags: list[int] = []
    for i, record in enumerate(records):
        derived = derive_record(record, ctx.spec.rules)
        if derived.drops:
            tagged.drops[i] = derived.drops
        if derived.disagreements:
            tagged.disagreements[i] = derived.disagreements
        for kind in ("sft", "preference", "kto"):
            for row in getattr(derived, kind):
                rows.append((kind, row))
                tags.append(i)
        tagged.thumbs.extend(
            (i, (ctx.keys.content_key(row, ("prompt",)), int(up), int(sole), dumps(row)))
            for up, row, sole in derived.thumbs
        )
    prepared = prepare_rows(rows, ctx)
    tagged.rows, tagged.sigs = list(zip(tags, prepared.rows, strict=True)), prepared.sigs
    return tagged


def prepare_rows(rows: list[tuple[str, Row]], ctx: Context) -> Batch:
    """The prepared rows (and their signatures) of a batch; no thumbs or counts yet."""
    batch = Batch()
    words = [word_hashes(row_text(row)) for _, row in rows]
    if ctx.hasher and rows:
        batch.sigs = ctx.hasher.signatures_of_words(words)
    scrub = ctx.spec.pii.mode != "off"
    for (kind, row), w in zip(rows, words, strict=True):
        hit = ctx.decontaminator.contaminated_by_words(w) if ctx.decontaminator else None
        key = ctx.keys.content_key(row, CONTENT[kind])
        held = _heldout(kind, row, ctx)
        annotators = list(row["provenance"]["annotators"])
        found: dict[str, int] = {}
        if hit is None and scrub:
            counts: Counter[str] = Counter()
            for name in MESSAGES[kind]:
                row[name] = [_scrub(m, ctx, counts) for m in row[name]]
            row["provenance"] = _scrub_provenance(row["provenance"], ctx, counts)
            found = dict(counts)
        space = f"kto:{row['label']}" if kind == "kto" else kind
        payload = dumps(row) if hit is None else b""
        batch.rows.append(Prepared(kind, space, key, hit, held, annotators, found, payload))
    return batch


def _scrub(message: dict[str, str], ctx: Context, found: Counter[str]) -> dict[str, str]:
    text, counts = scrub_text(message["content"], ctx.spec.pii.mode, ctx.key)
    found.update(counts)
    return {**message, "content": text}


def _scrub_provenance(prov: dict[str, Any], ctx: Context, found: Counter[str]) -> dict[str, Any]:
    """Every id in the provenance (annotators, source/trace/observation ids, location) with PII
    replaced by its stable token; ``annotators`` keeps its order (sorted by original id)."""
    mode, key = ctx.spec.pii.mode, ctx.key

    def scrub(value: Any, name: str) -> Any:
        if not isinstance(value, str):
            return value
        scrubber = scrub_location if name == "location" else scrub_id
        text, counts = scrubber(value, mode, key)
        if counts:
            found.update(counts)
        return text

    return {
        name: [scrub(v, name) for v in value] if isinstance(value, list) else scrub(value, name)
        for name, value in prov.items()
    }


def _heldout(kind: str, row: Row, ctx: Context) -> bool:
    """A hash of seed + the normalised opening of the conversation (``RowKeys.heldout_hash``
    of ``conversation_opening``), so one prompt never lands on both sides of the split, and
    neither do the turns of one conversation: a later turn's prompt carries the earlier turns
    and their answers, so a held-out turn 1 with a trained turn 2 would be evaluated on text
    the model was trained on."""
    spec = ctx.spec
    if spec.heldout_fraction <= 0:
        return False
    prompt = row["messages"][:-1] if kind == "sft" else row["prompt"]
    h = ctx.keys.heldout_hash(spec.seed, conversation_opening(prompt))
    return int.from_bytes(h[:8], "big") / 2**64 < spec.heldout_fraction


def conversation_opening(prompt: list[Any]) -> list[Any]:
    """The messages up to and including the first user message (the whole prompt when it has
    none). A single-turn prompt is its own opening, so its split is what it always was."""
    for i, message in enumerate(prompt):
        if type(message) is dict and message.get("role") == "user":
            return prompt[: i + 1]
    return prompt
