"""The evaluate stage: base model, production adapter (if any) and candidate, side by side.

Writes ``report.json`` (``metrics[role]["task/metric"] = {value, stderr, samples}``),
``report.md`` (a table with deltas against the base) and ``comparison.png``; per-sample
outputs go to ``samples/<role>/``. The gate reads ``report.json`` only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from feinschliff import __version__
from feinschliff.artifacts import (
    AdapterRef,
    ReportRef,
    input_key,
    mark_complete,
    prepare_out,
    reusable,
    write_json,
)
from feinschliff.evaluate.harness import run_tasks
from feinschliff.models import resolve_model
from feinschliff.plots import plot_comparison
from feinschliff.recipe import Recipe
from feinschliff.recipe_loader import section_hash

log = logging.getLogger(__name__)


def run_evaluate(
    recipe: Recipe, adapter: AdapterRef, out: Path, *, production: AdapterRef | None = None
) -> ReportRef:
    key = input_key(
        section_hash(recipe, "base_model", "evaluate"),
        adapter.sha256,
        production.sha256 if production else None,
        __version__,
    )
    if digest := reusable(out, key):
        log.info("evaluate: reusing finished report in %s", out)
        return ReportRef(path=str(out), sha256=digest)
    prepare_out(out, key)
    spec = recipe.evaluate
    model_path = resolve_model(recipe.base_model.name)
    roles: dict[str, str | None] = {"base": None}
    if production is not None:
        roles["production"] = str(production.dir / "adapter")
    roles["candidate"] = str(adapter.dir / "adapter")

    metrics: dict[str, dict[str, Any]] = {}
    for role, adapter_dir in roles.items():
        log.info("evaluate: %s on %s", role, ", ".join(spec.tasks))
        metrics[role] = run_tasks(
            model_path,
            spec.tasks,
            adapter=adapter_dir,
            dtype=recipe.base_model.dtype,
            limit=spec.limit,
            batch_size=spec.batch_size,
            num_fewshot=spec.num_fewshot,
            samples_out=out / "samples" / role,
        )
    report = {
        "stage": "evaluate",
        "use_case": recipe.use_case,
        "tasks": spec.tasks,
        "limit": spec.limit,
        "models": {
            role: {"base_model": recipe.base_model.name, "adapter": path}
            for role, path in roles.items()
        },
        "metrics": metrics,
    }
    write_json(out / "report.json", report)
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    plot_comparison(
        {role: {m: v["value"] for m, v in per.items()} for role, per in metrics.items()},
        out / "comparison.png",
        title=f"{recipe.use_case}: base vs candidate",
    )
    digest = mark_complete(out, stage="evaluate", key=key)
    return ReportRef(path=str(out), sha256=digest)


def render_markdown(report: dict[str, Any]) -> str:
    metrics: dict[str, dict[str, Any]] = report["metrics"]
    roles = list(metrics)
    names = sorted({m for per in metrics.values() for m in per})
    head = "| metric | " + " | ".join(roles) + " | candidate - base |"
    lines = [f"# Evaluation: {report['use_case']}", "", head, "|" + "---|" * (len(roles) + 2)]
    for name in names:
        cells = []
        for role in roles:
            v = metrics[role].get(name)
            cells.append("n/a" if v is None else _fmt(v))
        base, cand = metrics.get("base", {}).get(name), metrics.get("candidate", {}).get(name)
        delta = f"{cand['value'] - base['value']:+.4f}" if base and cand else "n/a"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {delta} |")
    return "\n".join(lines) + "\n"


def _fmt(v: dict[str, Any]) -> str:
    se = v.get("stderr")
    return f"{v['value']:.4f} ± {se:.4f}" if se is not None else f"{v['value']:.4f}"
