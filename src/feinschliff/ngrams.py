"""The contamination rule, defined once: does a training row hold text of an evaluation set?

Ingest's decontamination (``feinschliff.ingest.decontam``) drops the rows it flags, the gate's
``contamination/overlaps`` metric (``feinschliff.evaluate.stage``) counts them, and generate's
filter (``feinschliff.generate.postprocess``) drops them; all three use this module.

- **Words**: the text lowercased and split on whitespace, punctuation around each token
  stripped (``„Köln“,`` -> ``köln``; ``z.B.`` -> ``z.b``; ``E-Mail`` stays one word; a
  free-standing dash is an empty word, so ``A – B`` and ``A - B`` match but ``A B`` does not).
  Words compare as crc32 hashes (``word_hashes``), the hashes ingest's MinHash shingles too,
  so ingest tokenises a row once for both.
- **Eval texts**: every string of an eval row on its own (question, passage, choice), metadata
  keys (``SKIP_KEYS``) skipped. A text of at least ``n`` (13) words contributes its n-grams;
  one of ``MIN_WORDS`` (8) to n-1 words counts whole (a short question copied verbatim has no
  13-gram); shorter strings (answers, choices) are too common to mean contamination.
- **Training text**: a row's non-system messages and answers (``row_text``): user, assistant,
  prompt, chosen, rejected, completion. The system prompt is deployment configuration shared
  by many rows, not text the row adds.
- A row is contaminated when its words contain an eval n-gram or a whole short eval text.

Lookup is anchored: eval sequences are indexed by their first ``ANCHOR`` words, so a row only
pays for a full comparison where such a word triple occurs (one set test per row otherwise).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from feinschliff.artifacts import jsonl_lines

N = 13
MIN_WORDS = 8  # GPT-3 used 8..13-grams; shorter texts (answers, choices) are too common
ANCHOR = 3  # <= MIN_WORDS: every indexed sequence has an anchor
SKIP_KEYS = {"id", "category", "label", "answer_index"}  # metadata, not eval text
_PUNCT = "".join(chr(c) for c in range(0x21, 0x30)) + ":;<=>?@[\\]^_`{|}~„“”‚‘’«»–—…"


def row_text(row: dict[str, Any]) -> str:
    """The text a row is compared on: every non-system message and answer."""
    msgs = row.get("messages") or (row.get("prompt") or []) + (row.get("chosen") or []) + (
        row.get("completion") or []
    )
    msgs = msgs + (row.get("rejected") or [])
    return "\n".join(m["content"] for m in msgs if m.get("role") != "system")


class _WordHashes(dict[str, int]):
    """crc32 per word, memoised; cleared when it grows past a bound (memory stays flat)."""

    LIMIT = 1 << 18

    def __missing__(self, token: str) -> int:
        if len(self) >= self.LIMIT:
            self.clear()
        # Tokens are whitespace-split; punctuation around a word does not make it another word.
        word = token.strip(_PUNCT)
        try:
            data = word.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (legal in JSON text) must not stop a stage
            data = word.encode("utf-8", "surrogatepass")
        value = self[token] = zlib.crc32(data)
        return value


_WORD_HASHES = _WordHashes()


def word_hashes(text: str) -> list[int]:
    """One crc32 per word (lowercased, surrounding punctuation ignored), in order."""
    return list(map(_WORD_HASHES.__getitem__, text.lower().split()))


def eval_texts(value: Any, key: str = "") -> Iterator[str]:
    """Each string of an eval row on its own (a question, a passage), metadata keys skipped."""
    if key in SKIP_KEYS:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from eval_texts(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from eval_texts(v, key)


class EvalIndex:
    """The n-grams of the eval texts and the short eval texts whole, each with its eval set's
    name, indexed by their first ``ANCHOR`` words."""

    def __init__(self, n: int = N):
        if n < ANCHOR:
            raise ValueError(f"n-grams need at least {ANCHOR} words, got {n}")
        self.n = n
        # anchor word triple -> [(sequence, eval set name)]
        self.anchored: dict[tuple[int, ...], list[tuple[tuple[int, ...], str]]] = {}
        self.anchors: set[tuple[int, ...]] = set()  # anchored's keys, as a set: tested per row
        self._indexed: set[tuple[tuple[int, ...], str]] = set()

    def __bool__(self) -> bool:
        return bool(self.anchored)

    def add(self, text: str, name: str = "") -> None:
        """Index one eval text (a no-op for texts under ``MIN_WORDS`` words)."""
        w = word_hashes(text)
        if len(w) < MIN_WORDS:
            return
        n = self.n
        seqs = [tuple(w)] if len(w) < n else [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
        for seq in seqs:
            if (seq, name) in self._indexed:  # a passage repeated across eval rows: compare once
                continue
            self._indexed.add((seq, name))
            self.anchored.setdefault(seq[:ANCHOR], []).append((seq, name))
            self.anchors.add(seq[:ANCHOR])

    def add_row(self, row: Any, name: str = "") -> None:
        for text in eval_texts(row):
            self.add(text, name)

    def contaminated_by(self, row: dict[str, Any]) -> str | None:
        """The name of an eval set whose text the row holds, or None."""
        return self.contaminated_by_words(word_hashes(row_text(row)))

    def contaminated_by_words(self, w: list[int]) -> str | None:
        """``contaminated_by`` on ``word_hashes(row_text(row))``, hashed once by the caller."""
        if self.anchors.isdisjoint(zip(w, w[1:], w[2:], strict=False)):
            return None  # the common case, checked in C
        anchored = self.anchored
        for i in range(len(w) - ANCHOR + 1):
            for seq, name in anchored.get(tuple(w[i : i + ANCHOR]), ()):
                if tuple(w[i : i + len(seq)]) == seq:
                    return name
        return None


def index_jsonl(paths: Iterable[Path], n: int = N) -> EvalIndex:
    """The index of JSONL eval sets, each named by its file stem."""
    index = EvalIndex(n)
    for path in paths:
        for line in jsonl_lines(path.read_text(encoding="utf-8")):
            if line.strip():
                index.add_row(json.loads(line), path.stem)
    return index


def contaminated(rows: Iterable[dict[str, Any]], index: EvalIndex) -> list[int]:
    """Indices of the rows that hold text of ``index``'s eval sets."""
    return [i for i, row in enumerate(rows) if index.contaminated_by(row) is not None]
