"""The promotion gate: every rule kind, missing metrics, baselines, and properties."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from feinschliff.gate import decide_promotion
from feinschliff.recipe import GateSpec


def report(candidate=None, base=None, production=None, samples=100):
    def entries(v):
        return {"t/acc": {"value": v, "stderr": 0.01, "samples": samples}} if v is not None else {}

    metrics = {"base": entries(base), "candidate": entries(candidate)}
    if production is not None:
        metrics["production"] = entries(production)
    return {"metrics": metrics}


def gate(*rules):
    return GateSpec.model_validate({"rules": list(rules)})


def test_min_and_max():
    g = gate({"rule": "min", "metric": "t/acc", "threshold": 0.5})
    assert decide_promotion(report(0.5), g).promote
    d = decide_promotion(report(0.49), g)
    assert not d.promote and d.failed[0].rule == "min" and d.failed[0].value == 0.49
    g = gate({"rule": "max", "metric": "t/acc", "threshold": 0.5})
    assert decide_promotion(report(0.5), g).promote
    assert not decide_promotion(report(0.51), g).promote


def test_missing_metric_fails_never_passes():
    g = gate({"rule": "min", "metric": "other/acc", "threshold": 0.0})
    d = decide_promotion(report(0.9), g)
    assert not d.promote and "missing" in d.results[0].detail
    nan = {"metrics": {"candidate": {"t/acc": {"value": math.nan}}}}
    assert not decide_promotion(
        nan, gate({"rule": "min", "metric": "t/acc", "threshold": 0})
    ).promote


def test_no_regression_prefers_production_and_falls_back_to_base():
    g = gate(
        {"rule": "no_regression", "metric": "t/acc", "baseline": "production", "tolerance": 0.02}
    )
    # without production: compared to base
    assert decide_promotion(report(0.49, base=0.5), g).promote
    assert not decide_promotion(report(0.47, base=0.5), g).promote
    # with production: base no longer matters
    d = decide_promotion(report(0.55, base=0.1, production=0.6), g)
    assert not d.promote and "production" in d.results[0].detail
    assert decide_promotion(report(0.59, base=0.9, production=0.6), g).promote


def test_no_regression_lower_is_better():
    g = gate(
        {"rule": "no_regression", "metric": "t/acc", "baseline": "base", "higher_is_better": False}
    )
    assert decide_promotion(report(0.3, base=0.4), g).promote
    assert not decide_promotion(report(0.41, base=0.4), g).promote


def test_no_regression_without_any_baseline_fails():
    g = gate({"rule": "no_regression", "metric": "t/acc", "baseline": "base"})
    assert not decide_promotion(report(0.9), g).promote


def test_min_samples():
    g = gate({"rule": "min_samples", "metric": "t/acc", "threshold": 50})
    assert decide_promotion(report(0.5, samples=50), g).promote
    assert not decide_promotion(report(0.5, samples=49), g).promote


def test_every_rule_is_reported_even_after_a_failure():
    g = gate(
        {"rule": "min", "metric": "t/acc", "threshold": 0.9},
        {"rule": "min_samples", "metric": "t/acc", "threshold": 10},
    )
    d = decide_promotion(report(0.5), g)
    assert [r.passed for r in d.results] == [False, True]


values = st.floats(min_value=0, max_value=1, allow_nan=False)


@given(cand=values, base=values, tol=st.floats(min_value=0, max_value=0.5), thr=values)
def test_decision_is_the_conjunction_of_rules(cand, base, tol, thr):
    g = gate(
        {"rule": "min", "metric": "t/acc", "threshold": thr},
        {"rule": "no_regression", "metric": "t/acc", "baseline": "base", "tolerance": tol},
    )
    d = decide_promotion(report(cand, base=base), g)
    assert d.promote == ((cand >= thr) and (cand >= base - tol))
    assert d.promote == all(r.passed for r in d.results)


@given(cand=values, thr=values)
def test_min_and_max_are_complementary_except_at_equality(cand, thr):
    lo = decide_promotion(report(cand), gate({"rule": "min", "metric": "t/acc", "threshold": thr}))
    hi = decide_promotion(report(cand), gate({"rule": "max", "metric": "t/acc", "threshold": thr}))
    assert lo.promote or hi.promote
    assert (lo.promote and hi.promote) == (cand == thr)
