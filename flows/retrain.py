"""The retrain flow: feedback -> dataset -> adapter -> evaluation -> gate -> registry.

Reads top to bottom; each step is a task in ``flows/tasks.py`` wrapping one library call.
Parameters are typed so the Prefect UI renders a form: the recipe path (the YAML stays the
source of truth) plus ``--set``-style overrides such as ``train.hyperparameters.max_steps=3``.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from feinschliff.pipeline import default_workdir, read_report, summary_text
from feinschliff.recipe_loader import dump_resolved, load_recipe
from flows.tasks import evaluate_task, gate_task, ingest_task, register_task, train_task


@flow(name="retrain")
def retrain(
    recipe_path: str, overrides: list[str] | None = None, workdir: str | None = None
) -> dict:
    """Retrain one use case's adapter from its recipe and promote it if the gate passes."""
    logger = get_run_logger()
    recipe = load_recipe(recipe_path, overrides or [])
    work = Path(workdir) if workdir else default_workdir(recipe)
    create_markdown_artifact(
        f"```yaml\n{dump_resolved(recipe)}```",
        key="resolved-recipe",
        description="The recipe with every default filled in",
    )

    data = ingest_task(recipe, work / "ingest")
    adapter = train_task(recipe, data, work / "train")
    report = evaluate_task(recipe, adapter, work / "evaluate")
    decision = gate_task(recipe, report)
    version = register_task(recipe, data, adapter, report, decision) if decision.promote else None

    summary = summary_text(read_report(report), decision, version)
    logger.info("run summary\n%s", summary)
    create_markdown_artifact(f"```\n{summary}\n```", key="run-summary", description="Gate decision")
    return {
        "use_case": recipe.use_case,
        "promoted": decision.promote,
        "version": version,
        "workdir": str(work),
        "report": str(Path(report.path) / "report.json"),
        "decision": decision.model_dump(),
    }
