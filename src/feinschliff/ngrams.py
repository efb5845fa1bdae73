"""Word n-gram overlap, the standard contamination test (13-grams, as in GPT-3 / lm-eval decontam).

Text is lower-cased and split into word tokens (letters and digits, umlauts included); a training
row is contaminated when it shares any 13-gram with any evaluation item, or contains a whole eval
text of ``MIN_WORDS`` (8) to 12 words (a short question copied verbatim has no 13-gram; shorter
strings such as answers and choices are too common to mean contamination). The same rule as
ingest's decontamination (``feinschliff.ingest.decontam``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORD = re.compile(r"\w+", re.UNICODE)
N = 13
MIN_WORDS = 8
SKIP_KEYS = {"id", "category", "label", "answer_index"}  # metadata, not eval text


@dataclass
class EvalIndex:
    """The n-grams of every eval text, and the short eval texts (MIN_WORDS..n-1 words) whole."""

    n: int = N
    grams: set[tuple[str, ...]] = field(default_factory=set)
    short: set[tuple[str, ...]] = field(default_factory=set)
    short_lengths: set[int] = field(default_factory=set)  # kept with `short`: hits() runs per row

    def __bool__(self) -> bool:
        return bool(self.grams or self.short)

    def add(self, text: str) -> None:
        words = tuple(WORD.findall(text.lower()))
        if len(words) >= self.n:
            self.grams |= {words[i : i + self.n] for i in range(len(words) - self.n + 1)}
        elif len(words) >= MIN_WORDS:
            self.short.add(words)
            self.short_lengths.add(len(words))

    def hits(self, text: str) -> bool:
        words = tuple(WORD.findall(text.lower()))
        if ngrams_of(words, self.n) & self.grams:
            return True
        return any(ngrams_of(words, k) & self.short for k in self.short_lengths)


def ngrams_of(words: tuple[str, ...], n: int) -> set[tuple[str, ...]]:
    return {words[i : i + n] for i in range(len(words) - n + 1)}


def ngrams(text: str, n: int = N) -> set[tuple[str, ...]]:
    return ngrams_of(tuple(WORD.findall(text.lower())), n)


def text_of(value: Any) -> str:
    """All string content of a JSON value (messages, choices, ...), space-joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return " ".join(text_of(v) for v in value.values())
    if isinstance(value, list):
        return " ".join(text_of(v) for v in value)
    return ""


def _eval_texts(value: Any) -> Iterable[str]:
    """Each string of an eval row on its own (a question, a passage), metadata keys skipped."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            if k not in SKIP_KEYS:
                yield from _eval_texts(v)
    elif isinstance(value, list):
        for v in value:
            yield from _eval_texts(v)


def index_jsonl(paths: Iterable[Path], n: int = N) -> EvalIndex:
    index = EvalIndex(n=n)
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                index.grams |= ngrams(text_of(row), n)  # n-grams may span a row's fields
                for text in _eval_texts(row):
                    index.add(text)
    return index


def contaminated(rows: Iterable[dict[str, Any]], index: EvalIndex) -> list[int]:
    """Indices of rows that share an n-gram with, or contain a short text of, ``index``."""
    return [i for i, row in enumerate(rows) if index.hits(text_of(row))]
