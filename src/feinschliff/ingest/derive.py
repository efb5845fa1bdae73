"""Derivation rules: one canonical feedback record -> SFT rows, preference pairs, KTO rows.

SFT (TRL conversational ``messages``), at most one row per record:
  - a human correction of the first answer is the target (``rules.corrections_as_sft``);
  - else a curated reference (Langfuse dataset item, ``rules.dataset_items_as_sft``);
  - else the first answer when it is accepted: its ratings pass ``rules.min_rating`` under
    ``rules.aggregation`` (mean / majority / unanimous), or, without ratings, its thumbs are up
    under the same aggregation.
Preference (TRL explicit-prompt ``prompt``/``chosen``/``rejected``):
  - a correction (chosen) against the answer it corrects (rejected);
  - preference labels and rankings over two answers: each submitted label and each ranking's
    first place is one vote; ``majority``/``mean`` need a strict majority, ``unanimous`` all
    votes; a draw gives no pair; ``tie`` labels do not vote;
  - across records (``pair_thumbs``): a thumbs-up answer against a thumbs-down answer to the
    same prompt (identical message list), paired in reading order.
KTO (TRL unpaired ``prompt``/``completion``/``label``): each answer with a thumbs verdict.

When annotators disagree (ratings on both sides of ``min_rating``, labels for different answers,
mixed thumbs, different corrections) the record is counted under ``disagreements``. A record that
yields nothing is counted under a drop reason; nothing is dropped silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

from feinschliff.ingest.records import FeedbackRecord, Vote
from feinschliff.specs.feedback import DerivationRules

Row = dict[str, Any]


@dataclass
class Derived:
    sft: list[Row] = field(default_factory=list)
    preference: list[Row] = field(default_factory=list)
    kto: list[Row] = field(default_factory=list)
    # (up, KTO-shaped row, sole: the record has no other output) waiting for a partner
    thumbs: list[tuple[bool, Row, bool]] = field(default_factory=list)
    drops: Counter[str] = field(default_factory=Counter)
    disagreements: Counter[str] = field(default_factory=Counter)


def derive_record(rec: FeedbackRecord, rules: DerivationRules) -> Derived:
    out = Derived()
    prov = rec.provenance()
    first = next(iter(rec.answers))
    original = rec.answers[first]
    fix = _correction(rec, out)
    reference = next((v for v in rec.votes if v.kind == "reference"), None)
    verdict = thumbs_verdict(rec, first, rules, out)

    if fix is not None and rules.corrections_as_sft:
        out.sft.append(_sft(rec, prov, fix, "correction"))
    elif reference is not None and rules.dataset_items_as_sft:
        out.sft.append(_sft(rec, prov, str(reference.value), "dataset_item"))
    elif accepted(rec, first, rules, out, verdict):
        out.sft.append(_sft(rec, prov, original, "accepted"))

    if fix is not None and rules.corrections_as_preference and fix != original:
        out.preference.append(_pref(rec, prov, fix, original, "correction_vs_original"))
    pair = preferred_pair(rec, rules, out)
    if pair is not None and rec.answers[pair[0]] != rec.answers[pair[1]]:
        out.preference.append(
            _pref(rec, prov, rec.answers[pair[0]], rec.answers[pair[1]], "annotated_preference")
        )
    if verdict is not None:
        if rules.kto:
            out.kto.append(_kto(rec, prov, original, verdict))
        if rules.thumbs_pairs:
            sole = not (out.sft or out.preference or out.kto)  # lost if no partner turns up
            out.thumbs.append((verdict, _kto(rec, prov, original, verdict), sole))
    if not (out.sft or out.preference or out.kto or out.thumbs):
        out.drops["no_training_signal"] += 1
    return out


def _votes(record: FeedbackRecord, kind: str, answer: str | None = None) -> list[Vote]:
    return [v for v in record.votes if v.kind == kind and (answer is None or v.answer == answer)]


def _agree(flags: list[bool], rules: DerivationRules) -> bool | None:
    """Aggregate yes/no votes: True, False, or None for a draw (or no unanimity)."""
    if not flags:
        return None
    yes, no = flags.count(True), flags.count(False)
    if rules.aggregation == "unanimous":
        return True if no == 0 else False if yes == 0 else None
    return None if yes == no else yes > no


def thumbs_verdict(
    rec: FeedbackRecord, answer: str, rules: DerivationRules, out: Derived
) -> bool | None:
    flags = [bool(v.value) for v in _votes(rec, "thumbs", answer)]
    if len(set(flags)) > 1:
        out.disagreements["thumbs"] += 1
    verdict = _agree(flags, rules)
    if flags and verdict is None:
        out.drops["thumbs_undecided"] += 1
    return verdict


def accepted(
    rec: FeedbackRecord, answer: str, rules: DerivationRules, out: Derived, thumbs: bool | None
) -> bool:
    ratings = [float(v.value) for v in _votes(rec, "rating", answer)]
    if not ratings:
        return thumbs is True
    passing = [r >= rules.min_rating for r in ratings]
    if len(set(passing)) > 1:
        out.disagreements["rating"] += 1
    if rules.aggregation == "mean":
        return mean(ratings) >= rules.min_rating
    return _agree(passing, rules) is True


def _correction(rec: FeedbackRecord, out: Derived) -> str | None:
    texts = [str(v.value) for v in _votes(rec, "correction")]
    if len(set(texts)) > 1:
        out.disagreements["correction"] += 1  # the first submitted correction is used
    return texts[0] if texts else None


def preferred_pair(
    rec: FeedbackRecord, rules: DerivationRules, out: Derived
) -> tuple[str, str] | None:
    """(chosen, rejected) from preference labels and ranking first places; None on a draw."""
    tally: Counter[str] = Counter()
    for v in rec.votes:
        if v.kind == "preference" and v.value:
            tally[v.value] += 1
        elif v.kind == "ranking":
            tally[v.value[0]] += 1
    if not tally:
        return None
    if len(tally) > 1:
        out.disagreements["preference"] += 1
    ranked = tally.most_common()
    if rules.aggregation == "unanimous" and len(ranked) > 1:
        out.drops["preference_not_unanimous"] += 1
        return None
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        out.drops["preference_draw"] += 1
        return None
    chosen = ranked[0][0]
    others = [k for k in rec.answers if k != chosen]
    return (chosen, others[0]) if others else None


def pair_thumbs(ups: list[Row], downs: list[Row]) -> tuple[list[Row], list[int], list[int]]:
    """Thumbs-up vs thumbs-down answers to one prompt (KTO-shaped rows in reading order): the
    preference rows, and the indexes of the ups and downs that are in none of them."""
    pairs: list[Row] = []
    unused_ups = list(range(len(downs), len(ups)))  # more of one kind than of the other
    unused_downs = list(range(len(ups), len(downs)))
    for i, (good, bad) in enumerate(zip(ups, downs, strict=False)):
        chosen, rejected = good["completion"], bad["completion"]
        if chosen[0]["content"] == rejected[0]["content"]:  # the same answer: no preference
            unused_ups.append(i)
            unused_downs.append(i)
        else:
            prov = {**good["provenance"], "rule": "thumbs_up_vs_down"}
            prov["rejected_source_id"] = bad["provenance"]["source_id"]
            prov["annotators"] = sorted(
                set(good["provenance"]["annotators"]) | set(bad["provenance"]["annotators"])
            )
            pairs.append(
                {
                    "prompt": good["prompt"],
                    "chosen": chosen,
                    "rejected": rejected,
                    "provenance": prov,
                }
            )
    return pairs, unused_ups, unused_downs


def _msgs(rec: FeedbackRecord) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in rec.prompt]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _sft(rec: FeedbackRecord, prov: dict[str, Any], answer: str, rule: str) -> Row:
    return {"messages": _msgs(rec) + _assistant(answer), "provenance": {**prov, "rule": rule}}


def _pref(rec: FeedbackRecord, prov: dict[str, Any], chosen: str, rejected: str, rule: str) -> Row:
    return {
        "prompt": _msgs(rec),
        "chosen": _assistant(chosen),
        "rejected": _assistant(rejected),
        "provenance": {**prov, "rule": rule},
    }


def _kto(rec: FeedbackRecord, prov: dict[str, Any], answer: str, label: bool) -> Row:
    return {
        "prompt": _msgs(rec),
        "completion": _assistant(answer),
        "label": label,
        "provenance": {**prov, "rule": "thumbs_up" if label else "thumbs_down"},
    }
