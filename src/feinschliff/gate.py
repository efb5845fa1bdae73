"""The promotion gate: a pure function from an evaluation report and the recipe's rules to a
decision. Every rule is evaluated (no short-circuit) so the decision explains itself; a metric
missing from the report fails its rule, it never passes silently.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from feinschliff.artifacts import write_json
from feinschliff.recipe import GateSpec, MaxRule, MinRule, MinSamplesRule, NoRegressionRule
from feinschliff.specs.evaluate import (
    ContaminationRule,
    PoisoningRule,
    RequireApprovalRule,
    WinRateRule,
)

# Slack for float arithmetic in `no_regression`: a drop of exactly `tolerance` (0.8 - 0.7 vs
# 0.1) must pass. Metrics are fractions of at most a few thousand items, so 1e-9 admits no real
# drop. `min`/`max` compare the value with the threshold directly and need none.
EPS = 1e-9


class Approval(BaseModel):
    """A human's answer to a `require_approval` rule (from the Prefect UI or the CLI)."""

    approved: bool
    by: str = "unknown"
    comment: str = ""


class RuleResult(BaseModel):
    rule: str
    metric: str
    value: float | None
    threshold: float | None
    passed: bool
    detail: str


class Decision(BaseModel):
    promote: bool
    results: list[RuleResult]
    needs_approval: bool = False
    approval: Approval | None = None

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.results if not r.passed]


def metric_value(value: Any) -> float | None:
    """A report value as a number, or None when there is none (missing, not a number, a bool,
    NaN, ±inf): what the gate, the run summary and the comparison plot treat as "n/a". An
    infinite value is no measurement either: it passed `min` rules and crashed `int()` in the
    contamination rule."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return None
    return float(value)


def _lookup(report: dict[str, Any], role: str, metric: str) -> dict[str, Any] | None:
    entry = report.get("metrics", {}).get(role, {}).get(metric)
    if not isinstance(entry, dict) or metric_value(entry.get("value")) is None:
        return None
    return entry


def _has_role(report: dict[str, Any], role: str) -> bool:
    """Whether ``role`` was evaluated at all (listed among the report's models or metrics)."""
    return role in (report.get("models") or {}) or role in (report.get("metrics") or {})


def check_rule(rule: Any, report: dict[str, Any], approval: Approval | None = None) -> RuleResult:
    if isinstance(rule, RequireApprovalRule):
        if approval is None:
            return RuleResult(
                rule="require_approval",
                metric="-",
                value=None,
                threshold=None,
                passed=False,
                detail="awaiting human approval",
            )
        verdict = "approved" if approval.approved else "rejected"
        return RuleResult(
            rule="require_approval",
            metric="-",
            value=None,
            threshold=None,
            passed=approval.approved,
            detail=f"{verdict} by {approval.by}: {approval.comment}",
        )
    if isinstance(rule, WinRateRule):
        return _check_win_rate(rule, report)
    cand = _lookup(report, "candidate", rule.metric)
    if cand is None:
        return RuleResult(
            rule=rule.rule,
            metric=rule.metric,
            value=None,
            threshold=None,
            passed=False,
            detail="metric missing from the candidate's report",
        )
    value = float(cand["value"])
    if isinstance(rule, MinRule):
        ok = value >= rule.threshold
        return RuleResult(
            rule="min",
            metric=rule.metric,
            value=value,
            threshold=rule.threshold,
            passed=ok,
            detail=f"{value:.4f} {'>=' if ok else '<'} {rule.threshold}",
        )
    if isinstance(rule, MaxRule):
        ok = value <= rule.threshold
        return RuleResult(
            rule="max",
            metric=rule.metric,
            value=value,
            threshold=rule.threshold,
            passed=ok,
            detail=f"{value:.4f} {'<=' if ok else '>'} {rule.threshold}",
        )
    if isinstance(rule, ContaminationRule):
        ok = value == 0
        return RuleResult(
            rule="contamination",
            metric=rule.metric,
            value=value,
            threshold=0.0,
            passed=ok,
            detail=f"{int(value)} training rows hold eval text "
            f"(a {cand.get('ngram', 13)}-gram or a whole short item)",
        )
    if isinstance(rule, PoisoningRule):
        ok = value == 0
        phrases = [f["phrases"][0] for f in cand.get("findings") or [] if f.get("phrases")]
        shown = "; ".join(f"'{p[:80]}'" for p in phrases[:3])
        return RuleResult(
            rule="poisoning",
            metric=rule.metric,
            value=value,
            threshold=0.0,
            passed=ok,
            detail=f"{int(value)} training rows hold phrases from a single contributor"
            + (f": {shown}" if shown else ""),
        )
    if isinstance(rule, MinSamplesRule):
        n = cand.get("samples")
        ok = isinstance(n, int) and n >= rule.threshold
        return RuleResult(
            rule="min_samples",
            metric=rule.metric,
            value=n,
            threshold=rule.threshold,
            passed=ok,
            detail=f"{n} samples, need {rule.threshold}",
        )
    if isinstance(rule, NoRegressionRule):
        return _check_no_regression(rule, report, cand, value)
    raise TypeError(f"unknown gate rule {rule!r}")  # pragma: no cover - union is exhaustive


def _check_no_regression(
    rule: NoRegressionRule, report: dict[str, Any], cand: dict[str, Any], value: float
) -> RuleResult:
    def result(passed: bool, threshold: float | None, detail: str) -> RuleResult:
        return RuleResult(
            rule="no_regression",
            metric=rule.metric,
            value=value,
            threshold=threshold,
            passed=passed,
            detail=detail,
        )

    # lm-eval knows each metric's direction (the harness writes it into the report): a rule
    # that compares the other way round would promote regressions and reject improvements
    says = cand.get("higher_is_better")
    if isinstance(says, bool) and says != rule.higher_is_better:
        return result(
            False,
            None,
            f"direction conflict: lm-eval says {'higher' if says else 'lower'} is better for "
            f"this metric, the rule says {'higher' if rule.higher_is_better else 'lower'}; "
            f"set higher_is_better: {str(says).lower()}",
        )
    role = rule.baseline
    ref_entry = _lookup(report, role, rule.metric)
    if ref_entry is None and role == "production" and not _has_role(report, "production"):
        # nothing in production yet: compare against the base model
        role, ref_entry = "base", _lookup(report, "base", rule.metric)
    # why evaluate left production out (another base model, or it is the candidate)
    skipped = (report.get("skipped") or {}).get("production")
    if ref_entry is None:
        return result(
            False,
            None,
            "production was evaluated but its value is missing (None/NaN); no fallback to base"
            if role == "production"
            else f"no {role} value to compare against"
            + (
                f" (production not evaluated: {skipped})"
                if role != rule.baseline and skipped
                else " (no production evaluated yet)"
                if role != rule.baseline
                else ""
            ),
        )
    refs = [(role, float(ref_entry["value"]))]
    note = f"; production not evaluated: {skipped}" if role != rule.baseline and skipped else ""
    if role == "production":
        # Against production alone every promotion could lower the bar by `tolerance`, and
        # weekly runs would drift without bound below the base model: the candidate must also
        # stay within `tolerance` of the base model, so total drift is bounded by `tolerance`.
        anchor = _lookup(report, "base", rule.metric)
        if anchor is not None:
            refs.append(("base", float(anchor["value"])))
        elif _has_role(report, "base"):
            note = "; base value missing, drift below base not checked"
    limits, shown, failed = [], [], []
    for name, ref in refs:
        limit = ref - rule.tolerance if rule.higher_is_better else ref + rule.tolerance
        ok = value >= limit - EPS if rule.higher_is_better else value <= limit + EPS
        limits.append(limit)
        shown.append(f"{value - ref:+.4f} vs {name} ({ref:.4f})")
        if not ok:
            failed.append(name)
    # the binding limit: the stricter of the two
    threshold = max(limits) if rule.higher_is_better else min(limits)
    detail = ", ".join(shown) + f", tolerance {rule.tolerance}" + note
    if failed:
        detail += f"; regression vs {' and '.join(failed)}"
        if "base" in failed and role == "production":
            detail += " (total drift below the base model may not exceed tolerance)"
    return result(not failed, threshold, detail)


def _count(entry: dict[str, Any], key: str) -> int | None:
    n = entry.get(key)
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None


def _check_win_rate(rule: WinRateRule, report: dict[str, Any]) -> RuleResult:
    entry = report.get("metrics", {}).get("candidate", {}).get(rule.metric)
    value = metric_value(entry.get("value")) if isinstance(entry, dict) else None

    def result(passed: bool, detail: str) -> RuleResult:
        return RuleResult(
            rule="win_rate",
            metric=rule.metric,
            value=value,
            threshold=rule.threshold,
            passed=passed,
            detail=detail,
        )

    if not isinstance(entry, dict):
        return result(False, "no judge results in the report")
    # Only decisive order-consistent verdicts (the same winner in both orders) count towards
    # `min_valid`. An order-inconsistent pair (the judge picked the same position both times) is
    # scored as a tie but carries no information, and neither does a consistent tie: a judge
    # that only ever names one position, or only ever says "tie", would otherwise pass with a
    # CI of [0.5, 0.5].
    consistent = _count(entry, "consistent")
    failures = entry.get("parse_failures") or 0
    inconsistent = entry.get("inconsistent") or 0
    if consistent is None:
        return result(
            False,
            "the report lacks the count of order-consistent judgements "
            "('consistent'; re-run evaluate)",
        )
    wins, losses, ties = (_count(entry, k) for k in ("wins", "losses", "ties"))
    if consistent == 0:
        decisive = 0
    elif wins is not None and losses is not None:
        decisive = wins + losses
    elif ties is not None:  # order-consistent ties
        decisive = consistent - ties
    else:
        return result(
            False,
            "the report lacks the counts of decisive verdicts ('wins'/'losses' or 'ties' "
            f"among the {consistent} order-consistent ones); re-run evaluate",
        )
    if not 0 <= decisive <= consistent:
        return result(
            False,
            f"inconsistent verdict counts: {decisive} decisive of {consistent} "
            "order-consistent; re-run evaluate",
        )
    counts = (
        f"{decisive} decisive, {consistent - decisive} tied, {inconsistent} order-inconsistent, "
        f"{failures} unparseable"
    )
    if decisive < rule.min_valid:
        return result(
            False,
            f"insufficient valid judgements: {decisive} decisive < {rule.min_valid} ({counts})",
        )
    low = metric_value(entry.get("ci_low"))
    high = metric_value(entry.get("ci_high"))
    ok = low is not None and low >= rule.threshold
    # a CI that is a single point at exactly the threshold is no evidence of a better candidate
    point = ok and high is not None and high - low <= EPS and low - rule.threshold <= EPS
    ok = ok and not point
    shown = "n/a" if low is None else f"{low:.3f}"
    if point:
        verdict = f"= CI high: a single point at the threshold {rule.threshold} does not pass"
    else:
        verdict = f"{'>=' if ok else '<'} {rule.threshold}"
    return result(ok, f"CI low {shown} {verdict} vs {entry.get('opponent')} ({counts})")


def decide_promotion(
    report: dict[str, Any], gate: GateSpec, approval: Approval | None = None
) -> Decision:
    """Evaluate every rule. ``needs_approval``: all automatic rules pass and a human must decide."""
    results = [check_rule(rule, report, approval) for rule in gate.rules]
    automatic = [r for r in results if r.rule != "require_approval"]
    asks = any(isinstance(r, RequireApprovalRule) for r in gate.rules)
    return Decision(
        promote=all(r.passed for r in results),
        results=results,
        needs_approval=asks and approval is None and all(r.passed for r in automatic),
        approval=approval,
    )


def write_decision(report_dir: Path, decision: Decision) -> Path:
    """Store the decision next to its report (excluded from the report's content hash)."""
    path = report_dir / "decision.json"
    write_json(path, decision.model_dump())  # atomic: a crash mid-write leaves the old file
    return path
