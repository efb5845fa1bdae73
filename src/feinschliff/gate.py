"""The promotion gate: a pure function from an evaluation report and the recipe's rules to a
decision. Every rule is evaluated (no short-circuit) so the decision explains itself; a metric
missing from the report fails its rule, it never passes silently.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel

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
    NaN): what the gate, the run summary and the comparison plot treat as "n/a"."""
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
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
            detail=f"{int(value)} training rows hold eval text (a 13-gram or a whole short item)",
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
        role = rule.baseline
        base = _lookup(report, role, rule.metric)
        if base is None and role == "production" and not _has_role(report, "production"):
            # nothing in production yet: compare against the base model
            role, base = "base", _lookup(report, "base", rule.metric)
        if base is None:
            detail = (
                "production was evaluated but its value is missing (None/NaN); no fallback to base"
                if role == "production"
                else f"no {rule.baseline} value to compare against"
            )
            return RuleResult(
                rule="no_regression",
                metric=rule.metric,
                value=value,
                threshold=None,
                passed=False,
                detail=detail,
            )
        ref = float(base["value"])
        limit = ref - rule.tolerance if rule.higher_is_better else ref + rule.tolerance
        ok = value >= limit - EPS if rule.higher_is_better else value <= limit + EPS
        delta = value - ref
        return RuleResult(
            rule="no_regression",
            metric=rule.metric,
            value=value,
            threshold=limit,
            passed=ok,
            detail=f"{delta:+.4f} vs {role} ({ref:.4f}), tolerance {rule.tolerance}",
        )
    raise TypeError(f"unknown gate rule {rule!r}")  # pragma: no cover - union is exhaustive


def _check_win_rate(rule: WinRateRule, report: dict[str, Any]) -> RuleResult:
    entry = report.get("metrics", {}).get("candidate", {}).get(rule.metric)
    if not isinstance(entry, dict):
        return RuleResult(
            rule="win_rate",
            metric=rule.metric,
            value=None,
            threshold=rule.threshold,
            passed=False,
            detail="no judge results in the report",
        )
    # Only order-consistent verdicts count as valid: an order-inconsistent pair (the judge
    # picked the same position both times) is scored as a tie but carries no information, and
    # a judge that only ever names one position would otherwise pass with a CI of [0.5, 0.5].
    valid = entry.get("consistent")
    failures = entry.get("parse_failures") or 0
    inconsistent = entry.get("inconsistent") or 0
    value = metric_value(entry.get("value"))
    if not isinstance(valid, int) or isinstance(valid, bool):
        return RuleResult(
            rule="win_rate",
            metric=rule.metric,
            value=value,
            threshold=rule.threshold,
            passed=False,
            detail="the report lacks the count of order-consistent judgements "
            "('consistent'; re-run evaluate)",
        )
    if valid < rule.min_valid:
        return RuleResult(
            rule="win_rate",
            metric=rule.metric,
            value=value,
            threshold=rule.threshold,
            passed=False,
            detail=f"insufficient valid judgements: {valid} order-consistent < {rule.min_valid} "
            f"({inconsistent} order-inconsistent, {failures} unparseable)",
        )
    low = metric_value(entry.get("ci_low"))
    ok = low is not None and low >= rule.threshold
    shown = "n/a" if low is None else f"{low:.3f}"
    return RuleResult(
        rule="win_rate",
        metric=rule.metric,
        value=value,
        threshold=rule.threshold,
        passed=ok,
        detail=f"CI low {shown} {'>=' if ok else '<'} {rule.threshold} "
        f"vs {entry.get('opponent')} ({valid} order-consistent, "
        f"{inconsistent} order-inconsistent, {failures} unparseable)",
    )


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
    path.write_text(json.dumps(decision.model_dump(), indent=2) + "\n", encoding="utf-8")
    return path
