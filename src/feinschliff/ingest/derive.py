"""Derivation rules: one canonical feedback record -> SFT rows, preference pairs, KTO rows.

SFT (TRL conversational ``messages``), at most one row per record:
  - a human correction of the first answer is the target (``rules.corrections_as_sft``);
  - else a curated reference (Langfuse dataset item, ``rules.dataset_items_as_sft``);
  - else the first answer when it is accepted: its ratings pass ``rules.min_rating`` under
    ``rules.aggregation`` (mean / majority / unanimous), or, without ratings, its thumbs are up
    under the same aggregation.
Preference (TRL explicit-prompt ``prompt``/``chosen``/``rejected``):
  - a correction (chosen) against the answer it corrects (rejected);
  - preference labels and rankings: each submitted label or ranking is one vote placing the
    answers; ``majority`` takes the answer more than half of the votes place first (chosen) and
    the one more than half place last (rejected), ``unanimous`` needs every vote for both,
    ``mean`` takes the best and the worst mean place; otherwise no pair (a counted drop:
    ``preference_draw``, ``preference_no_majority``, ``preference_not_unanimous``,
    ``preference_no_worst``); ``tie`` labels do not vote (``preferred_pair``);
  - across records (``pair_thumbs``): a thumbs-up answer against a thumbs-down answer to the
    same prompt (the same message list up to case and whitespace), paired in reading order.
KTO (TRL unpaired ``prompt``/``completion``/``label``): each answer with a thumbs verdict.

When annotators disagree (ratings on both sides of ``min_rating``, labels or rankings with
different best or worst answers, mixed thumbs, different corrections) the record is counted
under ``disagreements``. A record that
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
    """(chosen, rejected) from preference labels and rankings; None when the votes do not
    single out a best and a worst answer under ``rules.aggregation`` (counted drop reason).

    Each submitted ranking and label is one vote that places the answers (1 = best): a ranking
    in its order, a label its answer first and the other answers after it; answers a vote
    leaves out share the places after the ones it names (their mean place). ``majority``: the
    answer more than half of the votes place first is chosen, the one more than half place
    last is rejected; ``unanimous``: every vote; ``mean``: the best and the worst mean place.
    A ``tie`` label does not vote. The answers compared are those the rankings name, and all
    of the record's answers when a label votes (labels choose among the answer fields)."""
    votes = [v for v in rec.votes if v.kind == "ranking" or (v.kind == "preference" and v.value)]
    if not votes:
        return None
    labelled = list(rec.answers) if any(v.kind == "preference" for v in votes) else []
    pool = list(
        dict.fromkeys(labelled + [a for v in votes if v.kind == "ranking" for a in v.value])
    )
    if len(pool) < 2:  # one answer: nothing to prefer it to
        return None
    places = [_places(v, pool) for v in votes]
    firsts = [_single(p, min) for p in places]
    lasts = [_single(p, max) for p in places]
    if len(set(firsts)) > 1 or len(set(lasts) - {None}) > 1:
        out.disagreements["preference"] += 1
    if rules.aggregation == "mean":
        totals = {a: sum(p[a] for p in places) for a in pool}  # mean order; halves: exact
        chosen, rejected = _single(totals, min), _single(totals, max)
        missing = "preference_draw" if chosen is None else "preference_no_worst"
    elif rules.aggregation == "unanimous":
        chosen = firsts[0] if len(set(firsts)) == 1 else None
        rejected = lasts[0] if len(set(lasts)) == 1 else None
        agreed = chosen is not None and len(set(lasts)) == 1  # all name no worst answer
        missing = "preference_no_worst" if agreed else "preference_not_unanimous"
    else:
        chosen, rejected = _over_half(firsts), _over_half(lasts)
        top = Counter(firsts).most_common(2)
        draw = len(top) > 1 and top[0][1] == top[1][1]
        missing = (
            ("preference_draw" if draw else "preference_no_majority")
            if chosen is None
            else "preference_no_worst"
        )
    if chosen is None or rejected is None or chosen == rejected:
        out.drops[missing] += 1
        return None
    return chosen, rejected


def _places(vote: Vote, pool: list[str]) -> dict[str, float]:
    """Answer -> place in one vote (1 = best); the answers it does not name share the rest."""
    named = [vote.value] if vote.kind == "preference" else list(dict.fromkeys(vote.value))
    rest = [a for a in pool if a not in named]
    shared = (len(named) + 1 + len(pool)) / 2  # the mean of places len(named)+1 .. len(pool)
    return {**{a: float(i) for i, a in enumerate(named, start=1)}, **dict.fromkeys(rest, shared)}


def _single(places: dict[str, float], pick: Any) -> str | None:
    """The one answer at the best (``min``) or worst (``max``) place; None when several share
    it, or when there is only one answer."""
    if len(places) < 2:
        return None
    target = pick(places.values())
    found = [a for a, p in places.items() if p == target]
    return found[0] if len(found) == 1 else None


def _over_half(names: list[str | None]) -> str | None:
    """The name more than half of the entries hold (None entries count, but never win)."""
    name, n = Counter(names).most_common(1)[0]
    return name if name is not None and n * 2 > len(names) else None


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
