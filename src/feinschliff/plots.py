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
