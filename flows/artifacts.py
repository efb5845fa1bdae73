"""Prefect artifacts for a run: what an ML engineer looks at in the UI instead of the logs."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext

from feinschliff.artifacts import AdapterRef, DatasetRef, ReportRef
from feinschliff.gate import Decision
from feinschliff.pipeline import read_report
from feinschliff.recipe import Recipe
from feinschliff.recipe_loader import dump_resolved


def _key(recipe: Recipe, what: str) -> str:
    return f"{recipe.use_case}-{what}"


def publish_recipe(recipe: Recipe) -> None:
    create_markdown_artifact(
        f"```yaml\n{dump_resolved(recipe)}```",
        key=_key(recipe, "recipe"),
        description="The resolved recipe (every default filled in)",
    )


def publish_ingest(recipe: Recipe, data: DatasetRef) -> None:
    manifest = json.loads((data.dir / "manifest.json").read_text())
    rows = [{"output": k, "rows": v} for k, v in manifest["counts"].items()]
    rows += [{"output": f"dropped: {k}", "rows": v} for k, v in manifest.get("drops", {}).items()]
    rows += pull_rows(manifest)
    create_table_artifact(rows, key=_key(recipe, "ingest"), description="Ingest summary")


def _pulls(manifest: dict) -> list[tuple[str, dict]]:
    """(label, pull record) of each source that pulled live (``sources[i].pull``)."""
    return [
        (f"pull {i} ({source.get('kind')})", source["pull"])
        for i, source in enumerate(manifest.get("sources", []), 1)
        if source.get("pull")
    ]


def _watermark_moves(pull: dict) -> dict[str, str]:
    """Each watermark key as `before -> after` (`unchanged: X` when it did not move)."""
    before, after = pull.get("watermark_before") or {}, pull.get("watermark_after") or {}
    moves = {}
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        moves[name] = f"unchanged: {new}" if old == new else f"{old} -> {new}"
    return moves


def _stored(pull: dict) -> dict[str, str]:
    """Per kind, what a Langfuse pull stored of the rows it fetched (the lookback and the daily
    rescan re-read rows the mirror holds): `new N, unchanged U, updated X`."""
    return {
        kind: ", ".join(f"{k} {v}" for k, v in counts.items())
        for kind, counts in (pull.get("stored") or {}).items()
    }


def pull_rows(manifest: dict) -> list[dict]:
    """The ingest table's rows for live pulls: what each fetched, what it stored of that and
    how its watermark moved (the library logs them at INFO, which a deployed run does not
    show)."""
    rows: list[dict] = []
    for label, pull in _pulls(manifest):
        fetched = pull.get("fetched") or {}
        rows += [{"output": f"{label}: fetched {k}", "rows": v} for k, v in fetched.items()]
        rows += [{"output": f"{label}: stored {k}", "rows": v} for k, v in _stored(pull).items()]
        moves = _watermark_moves(pull).items()
        rows += [{"output": f"{label}: watermark {k}", "rows": v} for k, v in moves]
    return rows


def pull_lines(data: DatasetRef) -> list[str]:
    """One line per live pull for the run log: fetched counts and watermarks (none when the
    manifest cannot be read: an aid for the operator must not fail a run)."""
    try:
        manifest = json.loads((data.dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return []
    lines = []
    for label, pull in _pulls(manifest):
        fetched = ", ".join(f"{k} {v}" for k, v in (pull.get("fetched") or {}).items())
        marks = "; ".join(f"{k} {v}" for k, v in _watermark_moves(pull).items())
        stored = "; ".join(f"{k} {v}" for k, v in _stored(pull).items())
        kept = f"; stored {stored}" if stored else ""
        lines.append(f"{label}: fetched {fetched or 'nothing'}{kept}; watermark {marks or 'none'}")
    return lines


def _png(path: Path) -> str:
    return f"![{path.name}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"


def publish_training(recipe: Recipe, adapter: AdapterRef) -> None:
    metrics = json.loads((adapter.dir / "metrics.json").read_text())
    curve = metrics.get("loss_curve", [])
    table = "\n".join(f"| {p['step']} | {p['loss']:.4f} |" for p in curve)
    md = (
        f"## Training loss\n\n{_png(adapter.dir / 'loss.png')}\n\n| step | loss |\n|---|---|\n{table}\n\n"
        f"steps {metrics.get('global_step')}, wall {metrics.get('wall_seconds')} s, "
        f"peak RSS {metrics.get('peak_rss_mb')} MB, `{adapter.dir / 'loss.png'}`"
    )
    create_markdown_artifact(md, key=_key(recipe, "loss"), description="Loss curve")


def publish_evaluation(recipe: Recipe, report: ReportRef) -> None:
    data = read_report(report)
    rows = []
    for name in sorted({m for per in data["metrics"].values() for m in per}):
        row = {"metric": name}
        for role, per in data["metrics"].items():
            value = per.get(name, {}).get("value")
            row[role] = None if value is None else round(float(value), 4)
        rows.append(row)
    create_table_artifact(
        rows, key=_key(recipe, "evaluation"), description="Evaluation: base vs candidate"
    )


def decision_markdown(decision: Decision, version: str | None, register: bool = True) -> str:
    """The gate artifact's markdown: verdict heading (from the decision, not from whether a
    version was registered) and one table row per rule. A decision that waits for a human
    (``needs_approval``: every automatic rule passed) is headed as such, its approval row
    PENDING; an evaluate-only run (``register=False``) that passes is PASSED, not PROMOTED."""
    pending = decision.needs_approval  # every automatic rule passed, no answer yet
    lines = ["| rule | metric | value | threshold | result | detail |", "|---|---|---|---|---|---|"]
    for r in decision.results:
        if r.passed:
            result = "PASS"
        elif pending and r.rule == "require_approval":
            result = "PENDING"
        else:
            result = "FAIL"
        lines.append(
            f"| {r.rule} | {r.metric} | {r.value} | {r.threshold} | {result} | {r.detail} |"
        )
    if pending:
        verdict = "**AWAITING APPROVAL** (every automatic rule passed)"
    elif not decision.promote:
        verdict = "**REJECTED**"
    elif not register:
        verdict = "**PASSED** (not registered: register=false)"
    elif version:
        verdict = f"**PROMOTED** as `{version}`"
    else:
        verdict = "**PROMOTED** (not registered)"
    return f"## Gate: {verdict}\n\n" + "\n".join(lines)


def unchanged_markdown(version: str) -> str:
    """The gate artifact of a run whose trained adapter is already production ``version``."""
    return (
        f"## Gate: **UNCHANGED**: the adapter is already production `{version}`\n\n"
        "Training produced the adapter production serves (no new feedback, same training "
        "recipe): evaluation and gate were skipped, nothing was registered or promoted. "
        "Fresh numbers for it: `feinschliff evaluate`, or a run with `register=false`."
    )


def nothing_new_markdown(version: str) -> str:
    """The gate artifact of a warm start skipped: production ``version`` was trained on these
    rows with this training recipe."""
    return (
        f"## Gate: **UNCHANGED**: production `{version}` was trained on these rows\n\n"
        "`init_from: production` would continue it with another pass over the rows it was "
        "trained on (same `base_model` and `train` sections): training, evaluation and gate "
        "were skipped, nothing was registered or promoted. New feedback trains again."
    )


def held_markdown(version: str, why: str) -> str:
    """The gate artifact of a run whose adapter is a version no run promotes on its own."""
    return (
        f"## Gate: **HELD**: the adapter is `{version}`\n\n"
        f"The adapter is `{version}`, {why}. Evaluation and gate were skipped, nothing was "
        "registered or promoted, nobody was notified."
    )


def publish_unchanged(recipe: Recipe, version: str, markdown: str | None = None) -> None:
    """The gate artifact (same key as a decision) of a run that changed nothing (default: its
    adapter is production ``version``)."""
    create_markdown_artifact(
        markdown or unchanged_markdown(version),
        key=_key(recipe, "gate"),
        description="Gate decision and registry version",
    )


def publish_decision(
    recipe: Recipe, decision: Decision, version: str | None, register: bool = True
) -> None:
    """The gate artifact (one key per use case: a later one, e.g. the answer to an approval
    that an earlier one awaited, replaces it in the UI)."""
    create_markdown_artifact(
        decision_markdown(decision, version, register),
        key=_key(recipe, "gate"),
        description="Gate decision and registry version",
    )
    publish_history(recipe)


HISTORY_ROWS = 20  # the table's newest rows
HISTORY_PLOTTED = 100  # the plot's newest versions and runs (its width grows with them)


def publish_history(recipe: Recipe) -> None:
    """`registry history` as an artifact: the gate metrics across the newest versions and
    rejected runs (a plot) and the newest rows (a table), so whoever triggers or approves a
    run sees the trend. An aid: a registry it cannot read logs a warning, the run goes on."""
    import tempfile

    from feinschliff.pipeline import registry_root
    from feinschliff.registry_history import gate_metrics, use_case_history
    from feinschliff.registry_history_view import draw_history, history_table

    try:
        records = use_case_history(registry_root(recipe), recipe.use_case)
        if not records:
            return
        metrics = gate_metrics(records)
        with tempfile.TemporaryDirectory() as tmp:
            plot = Path(tmp) / "history.png"
            draw_history(records[-HISTORY_PLOTTED:], metrics, plot, use_case=recipe.use_case)
            image = _png(plot)
        table = "\n".join(history_table(records[-HISTORY_ROWS:], metrics))
        create_markdown_artifact(
            f"## {recipe.use_case}: versions over time\n\n{image}\n\n```\n{table}\n```\n",
            key=_key(recipe, "history"),
            description="Registry history: gate metrics across versions and rejected runs",
        )
    except Exception as exc:  # noqa: BLE001 - never fail a run over its history view
        run_logger(__name__).warning(
            "registry history artifact skipped: %s: %s", type(exc).__name__, exc
        )


def run_logger(name: str) -> Any:
    """The flow run's logger (its lines show in the UI), or the module's outside a run."""
    return get_run_logger() if FlowRunContext.get() else logging.getLogger(name)
