"""A flow run whose candidate the gate rejected, recorded in the registry's audit log.

The flow registers only adapters the gate promotes, so without this a rejected scheduled run
leaves no trace in the registry (only in Prefect's run history, which gets pruned), and "why
were the last three weekly runs rejected?" has no answer there. The ``rejected`` event holds
what `registry history` and `registry audit` show: when, the gate's per-rule results, the
candidate's metrics, the adapter's content hash, the data, the production compared with and
the run's workdir. Writing it never fails the run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from feinschliff.artifacts import AdapterRef, DatasetRef, ReportRef, input_key, rows_sha256
from feinschliff.gate import Decision
from feinschliff.pipeline import registry_root
from feinschliff.recipe import Recipe
from feinschliff.recipe_loader import recipe_hash
from feinschliff.registry_history import REJECTED
from feinschliff.registry_write import record_event_once

log = logging.getLogger(__name__)


def record_rejection(
    recipe: Recipe,
    decision: Decision,
    *,
    report: ReportRef,
    adapter: AdapterRef,
    adapter_sha256: str,
    data: DatasetRef,
    production: str | None,
    workdir: Path,
    run: str | None = None,
    ledger_run: str | None = None,
) -> bool:
    """Append a rejected run to the use case's audit log for `registry history` and `audit`
    (the flow registers only what the gate promotes): the gate's per-rule results, metrics,
    adapter content hash, data, the production compared with, the workdir. Once per flow run
    (``ledger_run``: a retry or crash-resume keeps it, the next scheduled run has its own, also
    when it rejects the same cached adapter) and production compared with. A registry it
    cannot write (read only, unreachable) gets a warning, never a failed run. True when the
    event was appended."""
    if decision.promote:
        return False
    try:
        decided = json.dumps(decision.model_dump(), sort_keys=True)
        key = input_key(ledger_run or "", report.sha256, adapter_sha256, production or "", decided)
        added = record_event_once(
            registry_root(recipe),
            recipe.use_case,
            REJECTED,
            key,
            **_rejection_fields(recipe, decision, report, adapter, data, production, workdir),
            adapter_sha256=adapter_sha256,
            run=run,
        )
    except Exception as exc:  # noqa: BLE001 - a record of a rejection must not fail the run
        log.warning(
            "the rejection of %s could not be recorded in the registry's audit log (%s: %s); "
            "`registry history` will not show this run",
            recipe.use_case,
            type(exc).__name__,
            exc,
        )
        return False
    if not added:  # a retried run, or a rerun that reused its decision
        log.info("the rejection of %s is in the audit log already", recipe.use_case)
    return added


def _rejection_fields(
    recipe: Recipe,
    decision: Decision,
    report: ReportRef,
    adapter: AdapterRef,
    data: DatasetRef,
    production: str | None,
    workdir: Path,
) -> dict[str, Any]:
    body = _read(report.dir / "report.json")
    metrics = _read(adapter.dir / "metrics.json")
    manifest = _read(data.dir / "manifest.json")
    failed = "; ".join(f"{r.rule} {r.metric}: {r.detail}" for r in decision.failed)
    return {
        "why": f"gate rejected: {failed}" if failed else "gate rejected",
        "candidate": adapter.sha256,  # the train output's hash, as approval events name it
        "compared_with": production,
        "decision": decision.model_dump(),
        "evaluation": {
            "report_sha256": report.sha256,
            "metrics": body.get("metrics"),
            "models": body.get("models"),
        },
        "dataset": {
            "sha256": data.sha256,
            "rows_sha256": rows_sha256(data),
            "counts": manifest.get("counts"),
        },
        "train": {
            k: metrics.get(k)
            for k in (
                "method",
                "base_model",
                "train_rows",
                "new_rows",
                "replayed_rows",
                "init_from",
            )
        },
        "recipe_sha256": recipe_hash(recipe),
        "workdir": str(workdir),
    }


def _read(path: Path) -> dict[str, Any]:
    """A stage output's JSON, or {} where it is missing or damaged: the event still records
    the decision and whatever else there is."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
