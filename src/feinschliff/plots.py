"""Plots people would rather look at than read: loss curves and metric comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: CI and workers have no display
import matplotlib.pyplot as plt  # noqa: E402

from feinschliff.gate import metric_value  # noqa: E402


def plot_loss(curve: list[dict[str, Any]], out: Path, *, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if curve:
        ax.plot([p["step"] for p in curve], [p["loss"] for p in curve], marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_comparison(values: dict[str, dict[str, float]], out: Path, *, title: str) -> None:
    """Grouped bars: one group per metric, one bar per model role (base, production, candidate).

    A role without a value for a metric (missing, None or NaN) gets no bar, only an "n/a" mark
    at its place: a 0.0 bar would read as a real score of zero.
    """
    metrics = sorted({m for per_role in values.values() for m in per_role})
    roles = list(values)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(metrics) + 2), 3.5), dpi=100)
    width = 0.8 / max(1, len(roles))
    for i, role in enumerate(roles):
        got = [metric_value(values[role].get(m)) for m in metrics]
        shown = [(j, v) for j, v in enumerate(got) if v is not None]
        ax.bar([j + i * width for j, _ in shown], [v for _, v in shown], width=width, label=role)
        for j, v in enumerate(got):
            if v is None:
                ax.text(
                    j + i * width, 0.0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90
                )
    ax.set_xticks([j + width * (len(roles) - 1) / 2 for j in range(len(metrics))])
    ax.set_xticklabels(metrics, rotation=15, ha="right")
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_history(
    versions: list[str],
    series: dict[str, dict[str, list[float | None]]],
    verdicts: list[str | None],
    production: str | None,
    out: Path,
    *,
    title: str,
    served: list[bool] | None = None,
    notes: list[str] | None = None,
) -> None:
    """One panel per metric across a use case's versions (oldest left): the candidate's value
    marked by the gate's verdict (passed: green dot, rejected: red cross, awaiting approval:
    orange square, none recorded: grey dot), ringed where the version was production at some
    time; the base model and the production each was compared with as thin grey lines; the
    current production version shaded.

    ``series``: metric -> role (candidate, base, production) -> a value per version (None: not
    recorded: no point, the line joins its neighbours; never drawn as zero). ``verdicts``:
    "pass", "fail", "awaiting approval" or None per version. ``served``: whether each version
    was ever production. ``notes``: words under a version's label ("rolled back", "retired").
    """
    names = list(series) or ["(no metrics recorded)"]
    width = max(7.0, 0.7 * len(versions) + 4)
    fig, axes = plt.subplots(
        len(names), 1, figsize=(width, 2.4 * len(names) + 0.6), dpi=100, sharex=True, squeeze=False
    )
    marks = {
        "pass": ("o", "tab:green", "gate passed"),
        "fail": ("X", "tab:red", "gate rejected"),
        "awaiting approval": ("s", "tab:orange", "awaiting approval"),
        None: ("o", "tab:gray", "no gate decision"),
    }
    for ax, name in zip(axes[:, 0], names, strict=True):
        roles = series.get(name, {})
        for role, style in (("base", ":"), ("production", "--")):
            xs, ys = _present(roles.get(role, []))
            if xs:
                ax.plot(xs, ys, style, color="tab:gray", linewidth=1, label=role)
        xs, ys = _present(roles.get("candidate", []))
        if xs:
            ax.plot(xs, ys, "-", color="tab:blue", linewidth=1, label="candidate")
            for verdict, (marker, color, label) in marks.items():
                at = [(i, y) for i, y in zip(xs, ys, strict=True) if verdicts[i] == verdict]
                if at:
                    ax.scatter(
                        *zip(*at, strict=True),
                        marker=marker,
                        color=color,
                        s=40,
                        zorder=3,
                        label=label,
                    )
            ring = [(i, y) for i, y in zip(xs, ys, strict=True) if served and served[i]]
            if ring:
                ax.scatter(
                    *zip(*ring, strict=True),
                    s=160,
                    facecolors="none",
                    edgecolors="black",
                    zorder=2,
                    label="was production",
                )
        else:
            ax.text(0.5, 0.5, "no values recorded", transform=ax.transAxes, ha="center")
        if production in versions:
            i = versions.index(production)
            ax.axvspan(i - 0.4, i + 0.4, color="gold", alpha=0.3, label=f"production: {production}")
        ax.set_ylabel(name, fontsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # outside the panel: it hid points
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    words = notes or [""] * len(versions)
    axes[-1, 0].set_xticks(range(len(versions)))
    axes[-1, 0].set_xticklabels(
        [f"{v}\n{n}" if n else v for v, n in zip(versions, words, strict=True)],
        rotation=45 if len(versions) > 10 else 0,
        fontsize=8,
    )
    axes[0, 0].set_title(title)
    fig.tight_layout()
    try:
        fig.savefig(out)
    finally:
        plt.close(fig)


def _present(values: list[Any]) -> tuple[list[int], list[float]]:
    """The positions and values of the numbers among ``values`` (None, NaN, ... left out)."""
    got = [(i, metric_value(v)) for i, v in enumerate(values)]
    kept = [(i, v) for i, v in got if v is not None]
    return [i for i, _ in kept], [v for _, v in kept]
