"""Decontamination: drop training rows that hold text of an evaluation set.

The rule (words, which eval texts count, 13-grams plus whole 8-12-word eval texts, which row
text is checked) is ``feinschliff.ngrams``'s, the one the gate's contamination metric and
generate's filter apply. Here: which eval sets, and reading them.

Eval sets are JSONL files: the bundled lm-eval tasks (``evals/lm_eval_tasks/<task>.jsonl``,
found via ``feinschliff.paths.bundled_tasks_dir``) named by the recipe's ``evaluate.tasks`` and
``feedback.decontamination.eval_sets``, or JSONL paths; ``feedback.decontamination.ngram`` sets
n (13 by default, as the gate). Their input hashes go to the manifest (``inputs``); a broken
line is skipped. Upstream lm-eval tasks without local data cannot be checked; the manifest
lists them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feinschliff.ingest.jsonio import Broken, iter_jsonl
from feinschliff.ngrams import EvalIndex
from feinschliff.paths import bundled_tasks_dir

log = logging.getLogger(__name__)


@dataclass
class EvalSets:
    """The eval sets found (name -> JSONL path) and those that cannot be checked locally."""

    files: dict[str, Path] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)


class MissingEvalSet(FileNotFoundError):
    """A JSONL eval set named by the recipe does not exist: decontamination would be off."""


def find_eval_sets(names: Iterable[str]) -> EvalSets:
    found = EvalSets()
    for name in dict.fromkeys(names):
        path = Path(name)
        is_file = path.suffix.lower() == ".jsonl"  # also .JSONL: a file, not a task name
        if is_file and not path.is_file():
            raise MissingEvalSet(f"eval set {name} does not exist (decontamination needs it)")
        candidate = path if is_file else bundled_tasks_dir() / f"{name}.jsonl"
        if candidate.is_file():
            found.files[name] = candidate
        else:
            found.unchecked.append(name)
    if found.unchecked:  # an upstream task without local data, or a typo of a bundled one
        log.warning(
            "decontamination cannot check %s: no local data (bundled tasks: %s)",
            ", ".join(found.unchecked),
            ", ".join(sorted(p.stem for p in bundled_tasks_dir().glob("*.jsonl"))),
        )
    return found


class Decontaminator:
    """The eval sets' ``EvalIndex``, each set named as the recipe names it."""

    def __init__(self, eval_sets: EvalSets, ngram: int):
        self.inputs: dict[str, str] = {}
        self.index = EvalIndex(ngram)
        for name, path in eval_sets.files.items():
            for _, row in iter_jsonl(path, self.inputs):
                if not isinstance(row, Broken):
                    self.index.add_row(row, name)

    def contaminated_by(self, row: dict[str, Any]) -> str | None:
        """The name of an eval set the row overlaps, or None."""
        return self.index.contaminated_by(row)

    def contaminated_by_words(self, words: list[int]) -> str | None:
        """``contaminated_by`` on ``word_hashes(row_text(row))``, which ingest computes anyway."""
        return self.index.contaminated_by_words(words)
