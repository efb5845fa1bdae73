"""Derivation rules: canonical feedback records -> SFT rows and preference pairs.

SFT (TRL conversational ``messages``):
  - a human correction of an answer is the target (when ``rules.corrections_as_sft``);
  - else an accepted answer: mean rating >= ``rules.min_rating``, or a majority of thumbs up.
  At most one SFT row per record: a correction supersedes the answer it corrects.
Preference (TRL explicit-prompt ``prompt``/``chosen``/``rejected``):
  - a preference label or a ranking over two answers (majority over annotators; ties none);
  - a correction (chosen) against the answer it corrects (rejected);
  - across records: a thumbs-up answer against a thumbs-down answer to the same prompt.
Records that yield nothing are counted under a reason, never dropped silently.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from statistics import mean
from typing import Any

from feinschliff.ingest.records import FeedbackRecord, Vote
from feinschliff.recipe import DerivationRules


def prompt_key(record: FeedbackRecord) -> str:
    return json.dumps([m.model_dump() for m in record.prompt], ensure_ascii=False, sort_keys=True)


def _msgs(record: FeedbackRecord) -> list[dict[str, str]]:
    return [m.model_dump() for m in record.prompt]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _votes(record: FeedbackRecord, kind: str, answer: str | None = None) -> list[Vote]:
    return [v for v in record.votes if v.kind == kind and (answer is None or v.answer == answer)]


def thumbs_verdict(record: FeedbackRecord, answer: str) -> bool | None:
    votes = [bool(v.value) for v in _votes(record, "thumbs", answer)]
    up, down = votes.count(True), votes.count(False)
    return None if up == down else up > down


def accepted(record: FeedbackRecord, answer: str, rules: DerivationRules) -> bool:
    ratings = [float(v.value) for v in _votes(record, "rating", answer)]
    if ratings:
        return mean(ratings) >= rules.min_rating
    return thumbs_verdict(record, answer) is True


def correction(record: FeedbackRecord) -> Vote | None:
    found = _votes(record, "correction")
    return found[0] if found else None


def preferred_pair(record: FeedbackRecord) -> tuple[str, str] | None:
    """Majority (chosen, rejected) over preference labels and rankings; None on a tie."""
    tally: Counter[str] = Counter()
    for v in record.votes:
        if v.kind == "preference" and v.value:
            tally[v.value] += 1
        elif v.kind == "ranking":
            tally[v.value[0]] += 1
    if not tally:
        return None
    ranked = tally.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None
    chosen = ranked[0][0]
    others = [k for k in record.answers if k != chosen]
    return (chosen, others[0]) if others else None


def derive_rows(
    records: Iterable[FeedbackRecord], rules: DerivationRules
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Counter[str]]:
    sft: list[dict[str, Any]] = []
    pref: list[dict[str, Any]] = []
    drops: Counter[str] = Counter()
    by_prompt: dict[str, list[tuple[FeedbackRecord, str, bool]]] = defaultdict(list)

    for rec in records:
        produced = False
        first = next(iter(rec.answers))
        fix = correction(rec)
        if fix is not None and rules.corrections_as_sft:
            sft.append(_sft(rec, fix.value, "correction"))
            produced = True
        elif accepted(rec, first, rules):
            sft.append(_sft(rec, rec.answers[first], "accepted"))
            produced = True
        if fix is not None and rules.corrections_as_preference and fix.value != rec.answers[first]:
            pref.append(_pref(rec, fix.value, rec.answers[first], "correction_vs_original"))
            produced = True
        pair = preferred_pair(rec)
        if pair is not None and rec.answers[pair[0]] != rec.answers[pair[1]]:
            pref.append(
                _pref(rec, rec.answers[pair[0]], rec.answers[pair[1]], "annotated_preference")
            )
            produced = True
        verdict = thumbs_verdict(rec, first)
        if verdict is not None:
            by_prompt[prompt_key(rec)].append((rec, rec.answers[first], verdict))
            produced = True
        if not produced:
            drops["no_training_signal"] += 1

    for group in by_prompt.values():
        ups = [(r, a) for r, a, v in group if v]
        downs = [(r, a) for r, a, v in group if not v]
        for (rec, good), (_, bad) in zip(ups, downs, strict=False):
            if good != bad:
                pref.append(_pref(rec, good, bad, "thumbs_up_vs_down"))
    return sft, pref, drops


def _sft(rec: FeedbackRecord, answer: str, rule: str) -> dict[str, Any]:
    return {
        "messages": _msgs(rec) + _assistant(answer),
        "provenance": {**rec.provenance(), "rule": rule},
    }


def _pref(rec: FeedbackRecord, chosen: str, rejected: str, rule: str) -> dict[str, Any]:
    return {
        "prompt": _msgs(rec),
        "chosen": _assistant(chosen),
        "rejected": _assistant(rejected),
        "provenance": {**rec.provenance(), "rule": rule},
    }
