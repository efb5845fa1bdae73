"""Word n-gram overlap, the standard contamination test (13-grams, as in GPT-3 / lm-eval decontam).

Text is lower-cased and split into word tokens (letters and digits, umlauts included); a training
row is contaminated when it shares any 13-gram with any evaluation item.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

WORD = re.compile(r"\w+", re.UNICODE)
N = 13


def ngrams(text: str, n: int = N) -> set[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def text_of(value: Any) -> str:
    """All string content of a JSON value (messages, choices, ...), space-joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return " ".join(text_of(v) for v in value.values())
    if isinstance(value, list):
        return " ".join(text_of(v) for v in value)
    return ""


def index_jsonl(paths: Iterable[Path], n: int = N) -> set[tuple[str, ...]]:
    grams: set[tuple[str, ...]] = set()
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                grams |= ngrams(text_of(json.loads(line)), n)
    return grams


def contaminated(
    rows: Iterable[dict[str, Any]], index: set[tuple[str, ...]], n: int = N
) -> list[int]:
    """Indices of rows sharing at least one n-gram with ``index``."""
    return [i for i, row in enumerate(rows) if ngrams(text_of(row), n) & index]
