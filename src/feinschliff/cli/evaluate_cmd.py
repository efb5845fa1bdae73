"""`feinschliff evaluate` and `feinschliff gate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from feinschliff.cli.app import Failure, RecipeArg, SetOpt, _complete_dir, _load, app


@app.command()
def evaluate(
    recipe: RecipeArg,
    adapter: Annotated[Path, typer.Option(help="A train output directory (holding adapter/).")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
    set_: SetOpt = None,
) -> None:
    """Run the recipe's lm-eval tasks on the base model, the production adapter (if any) and
    the candidate; write OUT/report.json, OUT/report.md and OUT/comparison.png."""
    from feinschliff.artifacts import AdapterRef
    from feinschliff.evaluate import run_evaluate
    from feinschliff.evaluate.harness import EvalError
    from feinschliff.pipeline import registry_root
    from feinschliff.registry import production_adapter

    cfg = _load(recipe, set_)
    ref = AdapterRef(path=str(adapter.resolve()), sha256=_complete_dir(adapter, "train"))
    try:
        report = run_evaluate(
            cfg, ref, out, production=production_adapter(registry_root(cfg), cfg.use_case)
        )
    except EvalError as exc:
        raise Failure(str(exc)) from exc
    typer.echo((report.dir / "report.md").read_text())


@app.command()
def gate(
    recipe: RecipeArg,
    report: Annotated[Path, typer.Option(help="report.json written by `evaluate`.")],
    set_: SetOpt = None,
) -> None:
    """Apply the recipe's gate rules to a report; prints value, threshold and pass/fail per rule.
    Exit 0: promote. Exit 3: rejected."""
    from feinschliff.gate import decide_promotion
    from feinschliff.pipeline import read_report

    cfg = _load(recipe, set_)
    decision = decide_promotion(read_report(report), cfg.gate)
    for r in decision.results:
        thr = "-" if r.threshold is None else f"{r.threshold:g}"
        val = "-" if r.value is None else f"{r.value:.4f}"
        typer.echo(
            f"{'PASS' if r.passed else 'FAIL'}  {r.rule:<14} {r.metric:<30} value={val:<8} "
            f"threshold={thr:<8} {r.detail}"
        )
    typer.echo("decision: " + ("PROMOTE" if decision.promote else "REJECT"))
    raise typer.Exit(0 if decision.promote else 3)
