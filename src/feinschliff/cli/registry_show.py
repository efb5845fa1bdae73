"""What `registry show` and `registry audit` print, beside the manifest and the raw log.

A manifest is immutable: a version registered awaiting approval keeps ``"promote": false``
there after a human approved and promoted it. The later decision is only in the audit log, so
`show VERSION` prints it after the manifest (on stderr: stdout stays the manifest's JSON).
`audit` prints one readable line per entry, a rejected flow run (it registered nothing; see
:func:`feinschliff.rejections.record_rejection`) with its failed rules, data and workdir.
"""

from __future__ import annotations

import json
from typing import Any

from feinschliff.registry_history import REJECTED


def later_decision(
    entries: list[dict[str, Any]], version: str, manifest: dict[str, Any]
) -> dict[str, Any] | None:
    """The audit log's latest gate entry about ``version`` when its decision is not the one
    the manifest records (the registration's); None when the manifest's is the latest."""
    latest = None
    for entry in entries:
        ours = entry.get("event") == "gate" and entry.get("new") == version
        if ours and isinstance(entry.get("decision"), dict):
            latest = entry
    recorded = manifest.get("gate") if isinstance(manifest, dict) else None
    if latest is None or _same(latest["decision"], recorded):
        return None
    return latest


def decision_lines(entry: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """The labelled note `show VERSION` prints after the manifest."""
    decision = entry["decision"]
    recorded = manifest.get("gate") if isinstance(manifest, dict) else None
    was = _verdict(recorded) if isinstance(recorded, dict) else "none"
    lines = [
        f"note: the manifest's gate decision ({was}) is the one made at registration; the "
        "audit log records a later one, which is the version's current gate decision:",
        f"latest gate decision (audit log, {entry.get('at', '-')} by {entry.get('by', '-')}, "
        f"{entry.get('why') or '-'}): {_verdict(decision)}",
    ]
    approval = decision.get("approval")
    if isinstance(approval, dict):
        said = "approved" if approval.get("approved") else "rejected"
        lines.append(f"  {said} by {approval.get('by') or '-'}: {approval.get('comment') or '-'}")
    lines += [f"  {_rule_line(r)}" for r in decision.get("results") or [] if isinstance(r, dict)]
    return lines


def audit_line(e: dict[str, Any]) -> str:
    """One readable line per audit entry."""
    # str: a damaged entry's null or number is shown, not a format error
    at, by, event = (str(e.get(k) if e.get(k) is not None else "-") for k in ("at", "by", "event"))
    if event == "approval":  # a reviewer's answer to the require_approval rule
        verdict = "approved" if e.get("approved") else "rejected"
        of = f" (candidate {str(e['candidate'])[:12]})" if e.get("candidate") else ""
        return (
            f"{at} {by:<10} {'approval':<8} {verdict:<10} "
            f"by {e.get('reviewer') or '-'}{of}  {e.get('why') or ''}"
        ).rstrip()
    if event == REJECTED:
        return _rejection_line({**e, "at": at, "by": by})
    what = str(e.get("alias") or event)
    gate = ""
    if isinstance(e.get("decision"), dict):
        gate = f" gate={'pass' if e['decision'].get('promote') else 'fail'}"
    return (
        f"{at} {by:<10} {event:<8} {what:<10} "
        f"{e.get('old') or '-'} -> {e.get('new') or '-'}{gate}  {e.get('why') or ''}"
    )


def _rejection_line(e: dict[str, Any]) -> str:
    """A flow run the gate rejected: nothing registered, the failed rules, what it trained
    on, what it was compared with and where its outputs are."""
    decision = e.get("decision") if isinstance(e.get("decision"), dict) else {}
    failed = [
        r for r in decision.get("results") or [] if isinstance(r, dict) and not r.get("passed")
    ]
    train = e.get("train") if isinstance(e.get("train"), dict) else {}
    dataset = e.get("dataset") if isinstance(e.get("dataset"), dict) else {}
    rows = train.get("train_rows")
    parts = [
        f"adapter {str(e.get('adapter_sha256') or '-')[:12]}",
        f"{rows} rows" if isinstance(rows, int) else None,
        f"data {str(dataset.get('rows_sha256') or dataset.get('sha256') or '-')[:12]}",
        f"vs production {e.get('compared_with') or '-'}",
        f"workdir {e.get('workdir') or '-'}",
    ]
    rules = "; ".join(_rule_line(r) for r in failed) or "-"
    return (
        f"{e.get('at', '-')} {e.get('by', '-'):<10} {REJECTED:<8} {'run':<10} "
        f"{', '.join(p for p in parts if p)}  gate=fail: {rules}"
    )


def _rule_line(rule: dict[str, Any]) -> str:
    verdict = "PASS" if rule.get("passed") else "FAIL"
    return f"{verdict} {rule.get('rule', '-')} {rule.get('metric', '-')}: {rule.get('detail', '')}"


def _verdict(decision: dict[str, Any]) -> str:
    if decision.get("promote") is True:
        return "promote: true (passed)"
    if decision.get("needs_approval") and not decision.get("approval"):
        return "promote: false (awaiting approval)"
    return "promote: false (rejected)"


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
