"""How `registry history` shows a use case's records: the table, the ``--json`` rows and the
plot's series; :mod:`feinschliff.registry_history` reads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from feinschliff.registry_history import ROLES, MetricPoint, VersionRecord


def history_rows(records: list[VersionRecord], metrics: list[str]) -> list[dict[str, Any]]:
    """One JSON-ready object per version or rejected run (``--json``; a run's ``version`` is
    null), metrics limited to ``metrics``."""
    rows = []
    for r in records:
        row = r.model_dump(exclude={"metrics"})
        row["metrics"] = {m: r.metrics[m].model_dump() for m in metrics if m in r.metrics}
        rows.append(row)
    return rows


def history_table(records: list[VersionRecord], metrics: list[str]) -> list[str]:
    """The table `registry history` prints: one line per version or rejected run (version
    ``-``, its time in the registered column), then the failed rules."""
    head = ["version", "registered", "method", "rows", "base model", "from", "gate", "status"]
    table = [head + metrics]
    for r in records:
        status = ",".join([r.state, *(a for a in r.aliases if a != "production")])
        cells = [
            r.version or "-",
            r.at or "-",
            r.method or "-",
            "-" if r.train_rows is None else str(r.train_rows),
            _short(r.base_model),
            _short(r.init_from),
            r.gate or "-",
            status + (",retired" if r.retired is not None else ""),
        ]
        table.append(cells + [_metric_cell(r.metrics.get(m)) for m in metrics])
    widths = [max(len(row[i]) for row in table) for i in range(len(head) + len(metrics))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    if metrics:
        lines.append(
            "metric cells: candidate value (b: change vs base, p: vs the production it was "
            "evaluated against); - not recorded"
        )
    for r in records:
        name = r.version or f"run {r.at or '-'}"
        for rule in r.rules:
            if rule.get("passed") is False:
                lines.append(
                    f"{name} gate FAIL {rule.get('rule', '-')} {rule.get('metric', '-')}: "
                    f"{rule.get('detail', '')}".rstrip()
                )
        if r.problem:
            lines.append(f"{name}: {r.problem}")
        if r.run is not None:
            sha = (r.adapter_sha256 or "-")[:12]
            lines.append(
                f"{name}: rejected, registered nothing (adapter {sha}, workdir "
                f"{r.run.get('workdir') or '-'}, compared with {r.compared_with or '-'})"
            )
    return lines


def plot_series(records: list[VersionRecord], metric: str) -> dict[str, list[float | None]]:
    """``{role: [value per version or run]}`` of one metric, for
    :func:`feinschliff.plots.plot_history`."""
    points = [r.metrics.get(metric) or MetricPoint() for r in records]
    return {role: [getattr(p, role) for p in points] for role in ROLES}


def plot_labels(records: list[VersionRecord]) -> list[str]:
    """The x labels: a version, or ``run`` for a rejected run (its date goes in the note)."""
    return [r.version or "run" for r in records]


def plot_notes(records: list[VersionRecord]) -> list[str]:
    """Words under a label: rolled back, retired, or a rejected run's date."""
    notes = []
    for r in records:
        words = ["rolled back"] if r.state == "rolled back" else []
        words += ["retired"] if r.retired is not None else []
        if r.run is not None:
            words = ["rejected", (r.at or "")[:10]]
        notes.append("\n".join(w for w in words if w))
    return notes


# ---- cells


def _short(text: str | None, width: int = 28) -> str:
    """A base model path as its last component, capped (the full one is in --json)."""
    if not text:
        return "-"
    if text.startswith(("/", ".", "~")):  # a local path; a hub id keeps its organisation
        text = text.rstrip("/").rsplit("/", 1)[-1]
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _num(value: float) -> str:
    return f"{value:.4g}"


def _metric_cell(point: MetricPoint | None) -> str:
    if point is None or point.candidate is None:
        return "-"
    cell = _num(point.candidate)
    deltas = [
        f"{tag}{point.candidate - other:+.4g}"
        for tag, other in (("b", point.base), ("p", point.production))
        if other is not None
    ]
    return f"{cell} ({' '.join(deltas)})" if deltas else cell


def draw_history(
    records: list[VersionRecord], metrics: list[str], out: Path, *, use_case: str
) -> None:
    """The ``--plot`` figure (also the Prefect run's history artifact): each metric across the
    versions and rejected runs, verdicts and production marked. Raises OSError on a write."""
    from feinschliff.plots import plot_history

    production = next((r.version for r in records if r.state == "production"), None)
    plot_history(
        plot_labels(records),
        {m: plot_series(records, m) for m in metrics},
        [r.gate for r in records],
        production,
        out,
        title=f"{use_case}: gate metrics by version",
        served=[r.state in ("production", "superseded", "rolled back") for r in records],
        notes=plot_notes(records),
    )
