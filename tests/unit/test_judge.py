"""Judge mechanics: verdict parsing, position-swap combination, bootstrap CI, gate rules."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from feinschliff.evaluate.judge import (
    JudgeResult,
    PairOutcome,
    bootstrap_ci,
    combine,
    judge_metrics,
    parse_rating,
    parse_verdict,
)
from feinschliff.gate import Approval, decide_promotion
from feinschliff.specs.evaluate import GateSpec, JudgeSpec

SPEC = JudgeSpec(base_url="http://127.0.0.1:1/v1", model="m", bootstrap_iters=500)


def test_parse_rating():
    assert parse_rating("Gut begründet. Bewertung: [[7]]") == 7
    assert parse_rating("Bewertung: [[9.5]]") == 9.5
    assert parse_rating("Bewertung: [8]") == 8  # FastChat's fallback form
    assert parse_rating("Bewertung: [[11]]") is None  # out of scale
    assert parse_rating("Ich finde die Antwort gut, 8 von 10.") is None
    assert parse_rating("") is None


def test_two_different_ratings_are_unparseable_not_the_first():
    # a judge that repeats the prompt's format example before its grade was scored 5
    echo = 'Gefordert ist das Format "Bewertung: [[5]]". Sehr gute Antwort. Bewertung: [[9]]'
    assert parse_rating(echo) is None
    assert parse_rating("Bewertung: [[7]] ... korrigiert: Bewertung: [[3]]") is None
    assert parse_rating("Bewertung: [6] oder [[8]]") == 8  # the fallback form only without [[n]]
    assert parse_rating("Bewertung: [4] ... Bewertung: [7]") is None
    assert parse_rating("Bewertung: [[7]], also nochmals: [[7]]") == 7


def test_parse_verdict():
    assert parse_verdict("Begründung ... [[A]]") == "A"
    assert parse_verdict("[[C]]") == "C"
    assert parse_verdict("[[A]] oder doch [[B]]") is None  # contradictory: unparseable
    assert parse_verdict("[[A]] ... also [[A]]") == "A"
    assert parse_verdict("A ist besser") is None


def test_combine_cancels_position_bias():
    assert combine("A", "B") == (1.0, True)  # candidate wins in both orders
    assert combine("B", "A") == (0.0, True)
    assert combine("C", "C") == (0.5, True)
    assert combine("A", "A") == (0.5, False)  # always picks position A: a tie, flagged
    assert combine("A", None) == (None, False)


@given(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=1, max_size=40))
def test_bootstrap_ci_brackets_the_mean(values):
    low, high = bootstrap_ci(values, 300, seed=1)
    mean = sum(values) / len(values)
    assert 0.0 <= low <= high <= 1.0
    assert low - 1e-9 <= mean <= high + 1e-9 or len(set(values)) > 1


def test_bootstrap_ci_narrows_with_more_data():
    few = bootstrap_ci([1.0, 0.0] * 5, 1000, 0)
    many = bootstrap_ci([1.0, 0.0] * 200, 1000, 0)
    assert (many[1] - many[0]) < (few[1] - few[0])


def _result(outcomes, failures=0):
    pairs = [PairOutcome(f"q{i}", "A", "B", o, True) for i, o in enumerate(outcomes)]
    pairs += [PairOutcome(f"f{i}", None, "A", None, False) for i in range(failures)]
    return JudgeResult(
        scores={"candidate": [7.0], "base": [5.0]},
        single_failures={"candidate": 0, "base": 1},
        pairs=pairs,
    )


def test_metrics_count_parse_failures_and_never_score_them():
    m = judge_metrics(_result([1.0, 1.0, 0.0], failures=5), SPEC, "base")
    win = m["candidate"]["judge/win_rate"]
    assert win["samples"] == 3 and win["parse_failures"] == 5
    assert abs(win["value"] - 2 / 3) < 1e-9
    assert m["base"]["judge/score"]["parse_failures"] == 1


def _gate(**kw):
    return GateSpec.model_validate({"rules": [{"rule": "win_rate", **kw}]})


def test_win_rate_rule_uses_the_lower_ci_bound():
    strong = {"metrics": judge_metrics(_result([1.0] * 30), SPEC, "base")}
    assert decide_promotion(strong, _gate(threshold=0.5, min_valid=10)).promote
    mixed = {"metrics": judge_metrics(_result([1.0, 0.0] * 15), SPEC, "base")}
    d = decide_promotion(mixed, _gate(threshold=0.5, min_valid=10))
    assert not d.promote and "CI low" in d.results[0].detail


def test_unparseable_judge_fails_the_gate_with_a_reason():
    report = {"metrics": judge_metrics(_result([], failures=40), SPEC, "base")}
    d = decide_promotion(report, _gate(threshold=0.0, min_valid=10))
    assert not d.promote
    assert (
        "insufficient valid judgements" in d.results[0].detail
        and "40 unparseable" in d.results[0].detail
    )
    assert not decide_promotion({"metrics": {}}, _gate()).promote


def test_contamination_rule():
    g = GateSpec.model_validate({"rules": [{"rule": "contamination"}]})
    clean = {"metrics": {"candidate": {"contamination/overlaps": {"value": 0.0}}}}
    dirty = {"metrics": {"candidate": {"contamination/overlaps": {"value": 2.0}}}}
    assert decide_promotion(clean, g).promote
    assert not decide_promotion(dirty, g).promote
    assert not decide_promotion({"metrics": {}}, g).promote  # never checked: no pass


def test_require_approval():
    g = GateSpec.model_validate(
        {
            "rules": [
                {"rule": "min", "metric": "t/acc", "threshold": 0.5},
                {"rule": "require_approval"},
            ]
        }
    )
    good = {"metrics": {"candidate": {"t/acc": {"value": 0.9}}}}
    bad = {"metrics": {"candidate": {"t/acc": {"value": 0.1}}}}
    waiting = decide_promotion(good, g)
    assert not waiting.promote and waiting.needs_approval
    assert not decide_promotion(bad, g).needs_approval  # no human asked when rules already fail
    yes = decide_promotion(good, g, Approval(approved=True, by="anna", comment="ok"))
    assert yes.promote and "anna" in yes.results[1].detail
    assert not decide_promotion(good, g, Approval(approved=False, by="ben")).promote
