"""Which self-instruct questions go on to be answered (pure; used in and after the pipeline).

The pipeline's global ``select`` step calls ``select_instructions`` to decide; the parent calls
it again on the ``instructions_raw`` leaf of the saved Distiset to count what was dropped and
why. Both see the same rows in the same order, so the counts describe exactly what happened.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable
from typing import Any

from feinschliff.generate.templates import invalid_text

# What ``select`` sends on when no question is left: distilabel 1.5 never passes an empty last
# batch on, so the steps after it would wait forever. It is answered by nobody and is no row of
# the output (``feinschliff.generate.tasks``, ``postprocess``).
PLACEHOLDER: dict[str, Any] = {"seed_id": None, "instruction": None}


def is_placeholder(row: dict[str, Any]) -> bool:
    return row.get("instruction") is None


def normalize(text: str) -> str:
    """Case-, width- and whitespace-insensitive form used for duplicate checks."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def select_instructions(
    replies: Iterable[tuple[str, list[str] | None]],
    limit: int,
    min_chars: int,
    max_chars: int,
) -> tuple[list[tuple[str, str]], Counter[str]]:
    """``(seed_id, questions)`` per self-instruct reply -> the first ``limit`` usable
    ``(seed_id, question)`` pairs, and the drop counts by reason."""
    drops: Counter[str] = Counter()
    seen: set[str] = set()
    selected: list[tuple[str, str]] = []
    for seed_id, questions in replies:
        if not questions:
            drops["instruction_reply_missing_or_unparseable"] += 1
            continue
        for question in questions:
            text = question.strip() if isinstance(question, str) else ""
            key = normalize(text)
            if invalid_text(text):  # an unpaired surrogate in the reply (parse_instructions)
                drops["instruction_invalid_text"] += 1
            elif len(text) < min_chars:
                drops["instruction_too_short"] += 1
            elif len(text) > max_chars:
                drops["instruction_too_long"] += 1
            elif key in seen:
                drops["instruction_duplicate"] += 1
            elif len(selected) >= limit:
                drops["instruction_over_limit"] += 1
            else:
                seen.add(key)
                selected.append((seed_id, text))
    return selected, drops
