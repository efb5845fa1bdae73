"""`feinschliff evaluate` and `feinschliff gate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from feinschliff.cli.app import (
    Failure,
    RecipeArg,
    SetOpt,
    _complete_dir,
    _load,
    _read_report,
    _unwritable,
    app,
    human_answer,
    os_error_line,
    refused_under,
)


@app.command()
def evaluate(
    recipe: RecipeArg,
    adapter: Annotated[
        Path, typer.Option(help="A finished `train` output directory (holding adapter/).")
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Output directory: new, empty or an earlier evaluate output (reused when the "
            "inputs are unchanged, else replaced); not inside --adapter or --data."
        ),
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            help="The ingest (or generate/mix) output the adapter was trained on. Needed for "
            "the held-out feedback metrics (and the usecase_heldout task), the LLM judge, the "
            "contamination count and the poisoning scan (which also cover the rows a warm start "
            "replayed): without it those metrics are missing and gate rules on them fail. Other "
            "data than the adapter's metrics.json records is refused (exit 2)."
        ),
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Run the recipe's lm-eval tasks (with --data also held-out feedback metrics and the LLM
    judge when configured) on the base model, the production adapter (if any, read from the
    recipe's register.registry; left out when trained on another base model) and the candidate;
    write OUT/report.json, OUT/report.md, OUT/comparison.png and per-sample outputs in
    OUT/samples/, and print report.md. Exit 2: an --adapter or --data that is no finished
    output, --data the adapter was not trained on, an OUT inside either or one the OS does not
    let us write (a read-only mount); exit 1: an evaluation or judge failure."""
    from feinschliff.artifacts import AdapterRef, DatasetRef
    from feinschliff.evaluate import run_evaluate
    from feinschliff.evaluate.harness import EvalError
    from feinschliff.evaluate.judge import JudgeError
    from feinschliff.evaluate.trained_data import TrainedOnOtherData
    from feinschliff.pipeline import registry_root
    from feinschliff.registry import production_adapter

    cfg = _load(recipe, set_)
    ref = AdapterRef(path=str(adapter.resolve()), sha256=_complete_dir(adapter, "train"))
    # checked now, not after the base model's whole evaluation has run
    if not (adapter / "adapter" / "adapter_config.json").is_file():
        raise Failure(
            f"--adapter {adapter}: no adapter/adapter_config.json (give a train output)", code=2
        )
    dref = None
    if data is not None:
        dref = DatasetRef(path=str(data.resolve()), sha256=_complete_dir(data, "ingest"))
    try:
        report = run_evaluate(
            cfg,
            ref,
            out,
            production=production_adapter(registry_root(cfg), cfg.use_case),
            data=dref,
        )
    except TrainedOnOtherData as exc:  # before EvalError, its base class
        raise Failure(str(exc), code=2) from exc
    except (EvalError, JudgeError) as exc:
        raise Failure(str(exc)) from exc
    except OSError as exc:
        refused = _refused_write(exc, out)
        if refused is None:
            raise  # a full disk, an unreadable input: main() prints it, exit 1
        raise refused from exc
    typer.echo((report.dir / "report.md").read_text())


def _refused_write(exc: OSError, out: Path) -> Failure | None:
    """A write into ``out`` that the OS refused (a read-only mount, no permission): a wrong
    output path, exit 2 naming it; None for any other OSError."""
    if not refused_under(exc, out):
        return None
    return Failure(f"--out {out}: {os_error_line(exc)}: choose another folder", code=2)


@app.command()
def gate(
    recipe: RecipeArg,
    report: Annotated[
        Path,
        typer.Option(help="report.json written by `evaluate` for this recipe's use case."),
    ],
    approve: Annotated[
        bool | None,
        typer.Option(
            "--approve/--reject",
            help="Answer a `require_approval` rule as a human (exit 2 if the gate has none).",
        ),
    ] = None,
    by: Annotated[
        str | None,
        typer.Option(
            help="Who approves or rejects, recorded in the rule's detail in decision.json "
            "(default: cli). Only with --approve/--reject."
        ),
    ] = None,
    comment: Annotated[
        str,
        typer.Option(
            help="The reason for the approval or rejection, recorded with --by in "
            "decision.json. Only with --approve/--reject."
        ),
    ] = "",
    set_: SetOpt = None,
) -> None:
    """Apply the recipe's gate rules to a report; prints value, threshold and pass/fail per rule
    and writes the decision to decision.json next to the report (replacing an earlier one);
    registers nothing. Exit 0: promote. Exit 3: rejected (or awaiting a human approval).
    Exit 2: a --report that is no evaluate report, is of another use case or lies in a folder
    the OS does not let us write (a read-only mount)."""
    from feinschliff.gate import decide_promotion, write_decision

    cfg = _load(recipe, set_)
    approval = human_answer(cfg.gate, approve, by, comment)
    evaluated = _read_report(report, cfg.use_case)
    if why := _unwritable(report.parent):  # before any verdict is printed: none is recorded
        raise Failure(
            f"--report {report}: its folder is not writable ({why}): the gate writes "
            "decision.json beside the report; copy the evaluate output to a writable folder",
            code=2,
        )
    decision = decide_promotion(evaluated, cfg.gate, approval)
    for r in decision.results:
        thr = "-" if r.threshold is None else f"{r.threshold:g}"
        val = "-" if r.value is None else f"{r.value:.4f}"
        typer.echo(
            f"{'PASS' if r.passed else 'FAIL'}  {r.rule:<16} {r.metric:<30} value={val:<8} "
            f"threshold={thr:<8} {r.detail}"
        )
    write_decision(report.parent, decision)
    verdict = "PROMOTE" if decision.promote else "REJECT"
    if decision.needs_approval:
        verdict = "REJECT (awaiting approval: rerun with --approve or --reject)"
    typer.echo("decision: " + verdict)
    raise typer.Exit(0 if decision.promote else 3)
