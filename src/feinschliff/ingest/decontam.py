"""13-gram decontamination: drop training rows that contain text of an evaluation set.

Eval sets are JSONL files: the bundled lm-eval tasks (``evals/lm_eval_tasks/<task>.jsonl``,
found via ``feinschliff.paths.bundled_tasks_dir``) named by the recipe's ``evaluate.tasks`` and
``feedback.decontamination.eval_sets``, or JSONL paths. Every string value of an eval row with
at least ``MIN_WORDS`` (8) words is an eval text (questions, passages; answers and short
choices are too common to mean contamination). A training row is contaminated when its
user/assistant text contains any ``ngram``-word sequence of an eval text, or, for eval texts
shorter than ``ngram`` words, the whole eval text. Words compare lowercased without surrounding
punctuation. Upstream lm-eval tasks without local data cannot be checked; the manifest lists them.

Lookup is anchored: the eval sequences are indexed by their first three words, so a training
row only pays for a full comparison where such a trigram occurs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feinschliff.ingest.dedup import row_text, word_hashes
from feinschliff.ingest.jsonio import Broken, iter_jsonl
from feinschliff.paths import bundled_tasks_dir

MIN_WORDS = 8  # GPT-3 used 8..13-grams; shorter texts (answers, choices) are too common
ANCHOR = 3
SKIP_KEYS = {"id", "category", "label", "answer_index"}


@dataclass
class EvalSets:
    """The eval sets found (name -> JSONL path) and those that cannot be checked locally."""

    files: dict[str, Path] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)


def find_eval_sets(names: Iterable[str]) -> EvalSets:
    found = EvalSets()
    for name in dict.fromkeys(names):
        path = Path(name)
        candidates = [path] if path.suffix == ".jsonl" else [bundled_tasks_dir() / f"{name}.jsonl"]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            found.unchecked.append(name)
        else:
            found.files[name] = hit
    return found


class Decontaminator:
    def __init__(self, eval_sets: EvalSets, ngram: int):
        self.n = ngram
        self.inputs: dict[str, str] = {}
        # anchor trigram -> [(sequence, eval set name)]
        self.index: dict[tuple[int, ...], list[tuple[tuple[int, ...], str]]] = defaultdict(list)
        self.sequences = 0
        for name, path in eval_sets.files.items():
            for _, row in iter_jsonl(path, self.inputs):
                if not isinstance(row, Broken):
                    for text in _strings(row):
                        self._add(word_hashes(text), name)
        self.anchors = set(self.index)

    def _add(self, words: list[int], name: str) -> None:
        if len(words) < MIN_WORDS:
            return
        seqs = (
            [tuple(words)]
            if len(words) < self.n
            else [tuple(words[i : i + self.n]) for i in range(len(words) - self.n + 1)]
        )
        for seq in seqs:
            self.index[seq[:ANCHOR]].append((seq, name))
            self.sequences += 1

    def contaminated_by(self, row: dict[str, Any]) -> str | None:
        """The name of an eval set the row overlaps, or None."""
        return self.contaminated_by_words(word_hashes(row_text(row)))

    def contaminated_by_words(self, words: list[int]) -> str | None:
        if not self.index:
            return None
        if self.anchors.isdisjoint(zip(words, words[1:], words[2:], strict=False)):
            return None  # the common case, checked in C
        for i in range(len(words) - ANCHOR + 1):
            hits = self.index.get(tuple(words[i : i + ANCHOR]))
            if hits:
                for seq, name in hits:
                    if tuple(words[i : i + len(seq)]) == seq:
                        return name
        return None


def _strings(value: Any, key: str = "") -> Iterable[str]:
    if key in SKIP_KEYS:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, key)
