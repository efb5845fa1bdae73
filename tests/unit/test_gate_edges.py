"""Edge cases of the promotion gate and its reporting: an uninformative judge, missing values
in the summary and the plot, a production baseline without a value, a drop of exactly the
tolerance, and the gate artifact's heading when nothing was registered."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from feinschliff.evaluate.judge import JudgeResult, PairOutcome, combine, judge_metrics
from feinschliff.gate import Decision, RuleResult, check_rule, decide_promotion
from feinschliff.recipe import GateSpec
from feinschliff.specs.evaluate import JudgeSpec

SPEC = JudgeSpec(base_url="http://127.0.0.1:1/v1", model="m", bootstrap_iters=500)


def gate(*rules):
    return GateSpec.model_validate({"rules": list(rules)})


def _judged(verdicts: list[tuple[str | None, str | None]]) -> dict:
    pairs = []
    for i, (first, second) in enumerate(verdicts):
        outcome, consistent = combine(first, second)
        pairs.append(PairOutcome(f"q{i}", first, second, outcome, consistent))
    metrics = judge_metrics(JudgeResult(pairs=pairs), SPEC, "production")
    return {"metrics": with_verdict_counts(metrics, pairs)}


def with_verdict_counts(metrics: dict, pairs: list[PairOutcome]) -> dict:
    """The judge's win_rate entry with its decisive-verdict counts (wins, losses, order-consistent
    ties), as the gate needs them; added here when the judge does not write them itself."""
    entry = metrics["candidate"]["judge/win_rate"]
    kept = [p.outcome for p in pairs if p.outcome is not None and p.consistent]
    counts = {"wins": kept.count(1.0), "losses": kept.count(0.0), "ties": kept.count(0.5)}
    for key, n in counts.items():
        assert entry.setdefault(key, n) == n, key
    return metrics


# 1. win_rate: only decisive order-consistent verdicts are valid judgements


def test_position_biased_judge_fails_win_rate():
    # always [[A]]: every pair is order-inconsistent, a tie; CI [0.5, 0.5] used to pass 0.5
    report = _judged([("A", "A")] * 20)
    win = report["metrics"]["candidate"]["judge/win_rate"]
    assert win["consistent"] == 0 and win["inconsistent"] == 20 and win["ci_low"] == 0.5
    d = decide_promotion(report, gate({"rule": "win_rate"}))
    assert not d.promote
    detail = d.results[0].detail
    assert "insufficient valid judgements" in detail and "0 decisive" in detail
    assert "20 order-inconsistent" in detail


def test_min_valid_counts_only_order_consistent_verdicts():
    g = gate({"rule": "win_rate", "threshold": 0.5, "min_valid": 10})
    # 9 consistent wins and 30 inconsistent ties: 39 parseable, but only 9 informative
    few = _judged([("A", "B")] * 9 + [("B", "B")] * 30)
    assert few["metrics"]["candidate"]["judge/win_rate"]["samples"] == 39
    d = decide_promotion(few, g)
    assert not d.promote and "9 decisive < 10" in d.results[0].detail
    # 10 consistent wins (and some inconsistent ties) are enough
    enough = _judged([("A", "B")] * 10 + [("A", "A")] * 2)
    d = decide_promotion(enough, g)
    assert d.promote, d.results[0].detail
    assert "10 decisive, 0 tied, 2 order-inconsistent" in d.results[0].detail


def test_win_rate_without_consistent_count_fails_closed():
    entry = {"value": 0.9, "ci_low": 0.8, "ci_high": 1.0, "samples": 40, "parse_failures": 0}
    report = {"metrics": {"candidate": {"judge/win_rate": entry}}}
    d = decide_promotion(report, gate({"rule": "win_rate"}))
    assert not d.promote and "order-consistent" in d.results[0].detail
    for bad in (None, "40", True, 40.0):
        report["metrics"]["candidate"]["judge/win_rate"] = entry | {"consistent": bad}
        assert not decide_promotion(report, gate({"rule": "win_rate"})).promote


def test_win_rate_with_missing_ci_fails_without_crashing():
    entry = {"value": None, "ci_low": None, "samples": 40, "consistent": 40, "wins": 20}
    entry["losses"] = 20
    d = decide_promotion(
        {"metrics": {"candidate": {"judge/win_rate": entry}}}, gate({"rule": "win_rate"})
    )
    assert not d.promote and "CI low n/a" in d.results[0].detail


# 2. summary_text: a None (or NaN) value shows as n/a


def test_summary_text_shows_missing_values_as_na():
    from feinschliff.pipeline import summary_rows, summary_text

    report = {
        "metrics": {
            "base": {"t/acc": {"value": 0.5}, "t/nan": {"value": math.nan}},
            "candidate": {
                "t/acc": {"value": 0.6},
                "judge/win_rate": {"value": None},
                "t/nan": {"value": 0.3},
                "t/cnan": {"value": math.nan},
            },
        }
    }
    rows = {r[0]: r[1:] for r in summary_rows(report)}
    assert rows["t/acc"] == ("0.5000", "0.6000", "+0.1000")
    assert rows["judge/win_rate"] == ("n/a", "n/a", "n/a")
    assert rows["t/nan"] == ("n/a", "0.3000", "n/a")
    assert rows["t/cnan"] == ("n/a", "n/a", "n/a")
    decision = Decision(promote=False, results=[])
    text = summary_text(report, decision, None)
    assert "judge/win_rate" in text and "decision: REJECTED" in text


# 3. no_regression vs production: fall back to base only when production was not evaluated


def _prod_report(prod_entry):
    metrics = {
        "base": {"judge/score": {"value": 3.0, "samples": 40}},
        "production": {} if prod_entry is None else {"judge/score": prod_entry},
        "candidate": {"judge/score": {"value": 4.0, "samples": 40}},
    }
    return {"models": {"base": {}, "production": {}, "candidate": {}}, "metrics": metrics}


@pytest.mark.parametrize(
    "prod_entry",
    [
        {"value": None, "samples": 0, "parse_failures": 40},
        {"value": math.nan, "samples": 0},
        None,  # production evaluated, the metric absent from its entries
    ],
)
def test_no_regression_does_not_fall_back_when_production_lacks_the_value(prod_entry):
    g = gate({"rule": "no_regression", "metric": "judge/score", "baseline": "production"})
    d = decide_promotion(_prod_report(prod_entry), g)
    assert not d.promote
    assert "production" in d.results[0].detail and "missing" in d.results[0].detail
    assert "vs base" not in d.results[0].detail


def test_no_regression_falls_back_to_base_when_nothing_is_in_production():
    g = gate({"rule": "no_regression", "metric": "judge/score", "baseline": "production"})
    report = _prod_report(None)
    del report["models"]["production"], report["metrics"]["production"]
    d = decide_promotion(report, g)
    assert d.promote and "vs base" in d.results[0].detail
    # production listed among the models only (its metrics entry lost): no fallback either
    report["models"]["production"] = {}
    assert not decide_promotion(report, g).promote


# 4. no_regression: a drop of exactly `tolerance` passes despite float arithmetic


def _acc(cand, base):
    return {
        "metrics": {"base": {"t/acc": {"value": base}}, "candidate": {"t/acc": {"value": cand}}}
    }


def test_drop_of_exactly_tolerance_passes():
    g = gate({"rule": "no_regression", "metric": "t/acc", "baseline": "base", "tolerance": 0.1})
    assert decide_promotion(_acc(14 / 20, 16 / 20), g).promote  # 0.8 - 0.1 = 0.7000000000000001
    assert not decide_promotion(_acc(13 / 20, 16 / 20), g).promote
    lower = gate(
        {
            "rule": "no_regression",
            "metric": "t/acc",
            "baseline": "base",
            "tolerance": 0.1,
            "higher_is_better": False,
        }
    )
    assert decide_promotion(_acc(0.8, 0.7), lower).promote  # 0.7 + 0.1 = 0.7999999999999999
    assert not decide_promotion(_acc(0.85, 0.7), lower).promote


@pytest.mark.parametrize("n", [20, 100, 126])
def test_no_regression_matches_exact_arithmetic_on_accuracies(n):
    # accuracies k/n: the rule must agree with exact rational arithmetic in both directions
    # (20, 100: drops of exactly the tolerance; 126: none, the slack must admit no real drop)
    for tol in (0.01, 0.02, 0.05, 0.1):
        up = gate(
            {"rule": "no_regression", "metric": "t/acc", "baseline": "base", "tolerance": tol}
        )
        down = gate(
            {
                "rule": "no_regression",
                "metric": "t/acc",
                "baseline": "base",
                "tolerance": tol,
                "higher_is_better": False,
            }
        )
        exact_tol = Fraction(str(tol))
        for k in range(0, n + 1, 3 if n > 50 else 1):
            for j in range(n + 1):
                report = _acc(j / n, k / n)
                drop = Fraction(k - j, n)
                assert check_rule(up.rules[0], report).passed == (drop <= exact_tol), (j, k, tol)
                assert check_rule(down.rules[0], report).passed == (-drop <= exact_tol), (j, k)


# 5. the Prefect gate artifact: heading from decision.promote, not from the version


def test_gate_artifact_heading_follows_the_decision():
    from flows.artifacts import decision_markdown

    ok = RuleResult(rule="min", metric="t/acc", value=0.6, threshold=0.5, passed=True, detail="")
    passed = Decision(promote=True, results=[ok])
    unregistered = decision_markdown(passed, None)
    assert unregistered.startswith("## Gate: **PROMOTED** (not registered)")
    assert "REJECTED" not in unregistered and "| min | t/acc | 0.6 | 0.5 | PASS |" in unregistered
    assert decision_markdown(passed, "v0003").startswith("## Gate: **PROMOTED** as `v0003`")
    failed = Decision(promote=False, results=[ok.model_copy(update={"passed": False})])
    assert decision_markdown(failed, None).startswith("## Gate: **REJECTED**")


# 6. comparison.png: a missing or NaN value gets no bar, never a 0.0 bar


def test_comparison_plot_leaves_missing_values_out(tmp_path, monkeypatch):
    from feinschliff import plots

    captured = {}
    orig = plots.plt.subplots

    def subplots(*a, **k):
        fig, ax = orig(*a, **k)
        captured["ax"] = ax
        return fig, ax

    monkeypatch.setattr(plots.plt, "subplots", subplots)
    values = {
        "base": {"t/acc": 0.4, "heldout/preference_accuracy": math.nan},
        "production": {"t/acc": 0.5, "judge/win_rate": None},
        "candidate": {"t/acc": 0.6, "judge/win_rate": 0.55, "heldout/preference_accuracy": 0.0},
    }
    out = tmp_path / "comparison.png"
    plots.plot_comparison(values, out, title="t")
    assert out.stat().st_size > 0
    ax = captured["ax"]
    names = [t.get_text() for t in ax.get_xticklabels()]
    width = 0.8 / 3
    drawn = {}
    for i, (role, container) in enumerate(zip(values, ax.containers, strict=True)):
        for bar in container:
            j = round(bar.get_x() + bar.get_width() / 2 - i * width)
            drawn[(role, names[j])] = bar.get_height()
    assert drawn == {
        ("base", "t/acc"): pytest.approx(0.4),
        ("production", "t/acc"): pytest.approx(0.5),
        ("candidate", "t/acc"): pytest.approx(0.6),
        ("candidate", "judge/win_rate"): pytest.approx(0.55),
        ("candidate", "heldout/preference_accuracy"): 0.0,  # a real zero is still drawn
    }
    marks = [t.get_text() for t in ax.texts]
    assert marks.count("n/a") == 4  # base: NaN + absent; production: absent + None
