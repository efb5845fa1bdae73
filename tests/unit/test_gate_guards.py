"""Guards of the promotion gate against a degenerate judge and against a drifting baseline:
`win_rate` counts only decisive order-consistent verdicts and refuses a single-point CI at the
threshold; `no_regression` against production stays bounded by the base model and refuses a
rule whose direction contradicts lm-eval's."""

from __future__ import annotations

import pytest

from feinschliff.evaluate.judge import JudgeResult, PairOutcome, combine, judge_metrics
from feinschliff.gate import decide_promotion
from feinschliff.recipe import GateSpec
from feinschliff.specs.evaluate import JudgeSpec
from tests.unit.test_gate_edges import with_verdict_counts

SPEC = JudgeSpec(base_url="http://127.0.0.1:1/v1", model="m", bootstrap_iters=500)


def gate(*rules):
    return GateSpec.model_validate({"rules": list(rules)})


def _judged(verdicts: list[tuple[str, str]]) -> dict:
    pairs = []
    for i, (first, second) in enumerate(verdicts):
        outcome, consistent = combine(first, second)
        pairs.append(PairOutcome(f"q{i}", first, second, outcome, consistent))
    metrics = judge_metrics(JudgeResult(pairs=pairs), SPEC, "base")
    return {"models": {"base": {}, "candidate": {}}, "metrics": with_verdict_counts(metrics, pairs)}


WIN, LOSS, TIE = ("A", "B"), ("B", "A"), ("C", "C")


# 1. win_rate: a judge that always says "tie" is no evidence


def test_all_tie_judge_is_rejected():
    report = _judged([TIE] * 30)
    win = report["metrics"]["candidate"]["judge/win_rate"]
    # every verdict order-consistent, CI [0.5, 0.5]: used to pass the default threshold 0.5
    assert win["consistent"] == 30 and win["ci_low"] == win["ci_high"] == 0.5
    d = decide_promotion(report, gate({"rule": "win_rate"}))
    assert not d.promote
    detail = d.results[0].detail
    assert detail.startswith("insufficient valid judgements: 0 decisive < 10")
    assert "0 decisive, 30 tied, 0 order-inconsistent, 0 unparseable" in detail


def test_mostly_ties_with_a_few_wins_is_rejected():
    # 3 wins and 27 ties: CI low 0.5 reaches 0.5, but only 3 verdicts say anything
    report = _judged([WIN] * 3 + [TIE] * 27)
    assert report["metrics"]["candidate"]["judge/win_rate"]["ci_low"] >= 0.5
    d = decide_promotion(report, gate({"rule": "win_rate", "min_valid": 10}))
    assert not d.promote and "3 decisive < 10 (3 decisive, 27 tied" in d.results[0].detail


def test_single_point_ci_at_the_threshold_does_not_pass():
    entry = {
        "value": 0.5,
        "ci_low": 0.5,
        "ci_high": 0.5,
        "consistent": 30,
        "inconsistent": 0,
        "wins": 10,
        "losses": 10,
        "ties": 10,
        "opponent": "base",
    }
    report = {"metrics": {"candidate": {"judge/win_rate": entry}}}
    d = decide_promotion(report, gate({"rule": "win_rate", "threshold": 0.5}))
    assert not d.promote and "single point" in d.results[0].detail
    assert "20 decisive, 10 tied" in d.results[0].detail
    # a single point above the threshold is still a pass, a real interval at it too
    above = entry | {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0, "wins": 30, "losses": 0}
    report["metrics"]["candidate"]["judge/win_rate"] = above | {"ties": 0}
    assert decide_promotion(report, gate({"rule": "win_rate", "threshold": 0.5})).promote
    report["metrics"]["candidate"]["judge/win_rate"] = entry | {"ci_high": 0.7}
    assert decide_promotion(report, gate({"rule": "win_rate", "threshold": 0.5})).promote


def test_clearly_better_candidate_still_promoted():
    report = _judged([WIN] * 24 + [LOSS] * 2 + [TIE] * 4 + [("A", "A")] * 3)
    d = decide_promotion(report, gate({"rule": "win_rate", "threshold": 0.5, "min_valid": 10}))
    assert d.promote, d.results[0].detail
    detail = d.results[0].detail
    assert detail.startswith("CI low") and ">= 0.5 vs base" in detail
    assert "(26 decisive, 4 tied, 3 order-inconsistent, 0 unparseable)" in detail
    # an even split is still judged on its CI, not on the counts
    even = _judged([WIN, LOSS] * 15)
    d = decide_promotion(even, gate({"rule": "win_rate", "threshold": 0.5, "min_valid": 10}))
    assert not d.promote and d.results[0].detail.startswith("CI low")


def test_ties_count_alone_is_enough_to_derive_the_decisive_verdicts():
    entry = {"value": 0.9, "ci_low": 0.8, "ci_high": 1.0, "consistent": 20, "ties": 2}
    report = {"metrics": {"candidate": {"judge/win_rate": entry | {"inconsistent": 0}}}}
    d = decide_promotion(report, gate({"rule": "win_rate"}))
    assert d.promote and "18 decisive, 2 tied" in d.results[0].detail


@pytest.mark.parametrize(
    "counts",
    [
        {},  # a report from before the gate needed them
        {"wins": 20},  # half of the pair
        {"wins": "20", "losses": 0},
        {"wins": True, "losses": 0},
        {"ties": -1},
        {"wins": 25, "losses": 10},  # more decisive verdicts than order-consistent ones
        {"ties": 41},
    ],
)
def test_win_rate_without_decisive_counts_fails_closed(counts):
    entry = {"value": 0.9, "ci_low": 0.8, "ci_high": 1.0, "samples": 40, "consistent": 30}
    report = {"metrics": {"candidate": {"judge/win_rate": entry | counts}}}
    d = decide_promotion(report, gate({"rule": "win_rate"}))
    assert not d.promote and "re-run evaluate" in d.results[0].detail


# 2. no_regression against production: bounded by the base model


def _acc(cand, base=None, prod=None, **extra):
    metrics = {"candidate": {"t/acc": {"value": cand, **extra}}}
    if base is not None:
        metrics["base"] = {"t/acc": {"value": base}}
    if prod is not None:
        metrics["production"] = {"t/acc": {"value": prod}}
    return {"models": {k: {} for k in metrics}, "metrics": metrics}


def test_weekly_promotions_cannot_drift_below_the_base_model():
    g = gate({"rule": "no_regression", "metric": "t/acc", "tolerance": 0.1})
    base, prod, history = 0.80, None, []
    # each week's candidate is `tolerance` below the previous one: within tolerance of the
    # production before it, so each run alone looked like "no regression"
    for cand in (0.71, 0.62, 0.53, 0.44):
        d = decide_promotion(_acc(cand, base=base, prod=prod), g)
        history.append((cand, d.promote, d.results[0].detail))
        if d.promote:
            prod = cand
    assert [p for _, p, _ in history] == [True, False, False, False]
    assert prod == 0.71 and prod >= base - 0.1
    week2 = history[1][2]
    assert "-0.0900 vs production (0.7100)" in week2 and "-0.1800 vs base (0.8000)" in week2
    assert "regression vs base" in week2 and "regression vs production" not in week2
    assert "total drift below the base model" in week2
    assert d.results[0].threshold == pytest.approx(0.7)  # the binding limit: base - tolerance


def test_base_bound_also_holds_for_lower_is_better():
    g = gate(
        {
            "rule": "no_regression",
            "metric": "t/acc",
            "tolerance": 2.0,
            "higher_is_better": False,
        }
    )
    assert decide_promotion(_acc(21.5, base=20.0, prod=20.5), g).promote
    d = decide_promotion(_acc(22.5, base=20.0, prod=21.5), g)  # +1.0 vs prod, +2.5 vs base
    assert not d.promote and "regression vs base" in d.results[0].detail
    assert d.results[0].threshold == pytest.approx(22.0)


def test_report_without_base_values_behaves_as_before():
    g = gate({"rule": "no_regression", "metric": "t/acc", "tolerance": 0.02})
    d = decide_promotion(_acc(0.59, prod=0.6), g)
    assert d.promote and d.results[0].detail == "-0.0100 vs production (0.6000), tolerance 0.02"
    assert d.results[0].threshold == pytest.approx(0.58)
    assert not decide_promotion(_acc(0.57, prod=0.6), g).promote
    # baseline base: a single comparison, as before
    g = gate({"rule": "no_regression", "metric": "t/acc", "baseline": "base", "tolerance": 0.02})
    d = decide_promotion(_acc(0.59, base=0.6, prod=0.1), g)
    assert d.promote and d.results[0].detail == "-0.0100 vs base (0.6000), tolerance 0.02"


def test_base_evaluated_without_the_value_leaves_production_alone_and_says_so():
    g = gate({"rule": "no_regression", "metric": "t/acc", "tolerance": 0.02})
    report = _acc(0.59, prod=0.6)
    report["models"]["base"] = {}
    d = decide_promotion(report, g)
    assert d.promote and "drift below base not checked" in d.results[0].detail


# 3. no_regression: the metric's direction from lm-eval wins over a contradicting rule


def test_direction_conflict_with_lm_eval_fails():
    g = gate({"rule": "no_regression", "metric": "t/acc", "baseline": "base"})
    # perplexity-like: lm-eval says lower is better; the rule's default says higher
    d = decide_promotion(_acc(35.0, base=25.0, higher_is_better=False), g)
    assert not d.promote
    detail = d.results[0].detail
    assert "lm-eval says lower is better" in detail and "set higher_is_better: false" in detail
    lower = gate(
        {"rule": "no_regression", "metric": "t/acc", "baseline": "base", "higher_is_better": False}
    )
    d = decide_promotion(_acc(20.0, base=25.0, higher_is_better=True), lower)
    assert not d.promote and "set higher_is_better: true" in d.results[0].detail
    # agreeing directions: judged as usual
    assert decide_promotion(_acc(20.0, base=25.0, higher_is_better=False), lower).promote
    assert not decide_promotion(_acc(35.0, base=25.0, higher_is_better=False), lower).promote
    assert decide_promotion(_acc(0.9, base=0.8, higher_is_better=True), g).promote
    # no (or no boolean) direction in the report: the rule's direction, as before
    assert decide_promotion(_acc(35.0, base=25.0), g).promote
    assert decide_promotion(_acc(35.0, base=25.0, higher_is_better="false"), g).promote
