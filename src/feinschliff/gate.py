"""The promotion gate: a pure function from an evaluation report and the recipe's rules to a
decision. Every rule is evaluated (no short-circuit) so the decision explains itself; a metric
missing from the report fails its rule, it never passes silently.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel

from feinschliff.recipe import GateSpec, MaxRule, MinRule, MinSamplesRule, NoRegressionRule


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

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.results if not r.passed]


def _lookup(report: dict[str, Any], role: str, metric: str) -> dict[str, Any] | None:
    entry = report.get("metrics", {}).get(role, {}).get(metric)
    if not isinstance(entry, dict):
        return None
    value = entry.get("value")
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return None
    return entry


def check_rule(rule: Any, report: dict[str, Any]) -> RuleResult:
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
        if base is None and role == "production":
            role, base = "base", _lookup(report, "base", rule.metric)
        if base is None:
            return RuleResult(
                rule="no_regression",
                metric=rule.metric,
                value=value,
                threshold=None,
                passed=False,
                detail=f"no {rule.baseline} value to compare against",
            )
        ref = float(base["value"])
        limit = ref - rule.tolerance if rule.higher_is_better else ref + rule.tolerance
        ok = value >= limit if rule.higher_is_better else value <= limit
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


def decide_promotion(report: dict[str, Any], gate: GateSpec) -> Decision:
    results = [check_rule(rule, report) for rule in gate.rules]
    return Decision(promote=all(r.passed for r in results), results=results)
