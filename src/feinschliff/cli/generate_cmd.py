"""`feinschliff generate`: seeds + a teacher LLM -> synthetic German training data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from feinschliff.cli.app import Failure, RecipeArg, SetOpt, _complete_dir, _load, app


@app.command()
def generate(
    recipe: RecipeArg,
    out: Annotated[
        Path,
        typer.Option(
            help="Output directory: new, empty or an earlier generate output (reused when the "
            "inputs are unchanged)."
        ),
    ],
    feedback: Annotated[
        Path | None,
        typer.Option(
            help="An ingest output: generated rows holding one of its held-out prompts are "
            "dropped, and (filters.dedup_against_feedback) questions duplicating its prompts."
        ),
    ] = None,
    mixed_out: Annotated[
        Path | None,
        typer.Option(
            help="Also write the mix of --feedback and the generated rows here (weights: "
            "generate.mix). Needs --feedback and must not be, hold or lie inside --out or "
            "--feedback (else exit 2)."
        ),
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Generate synthetic German training data with the recipe's `generate` section (distilabel
    self-instruct -> teacher answers -> optional judge ratings) and write OUT/sft.jsonl,
    OUT/preference.jsonl, OUT/manifest.json (teacher, template version, counts, drops, sha256),
    OUT/distiset/ and OUT/generate.log. Identical reruns reuse OUT; every teacher reply is
    cached, so a rerun after an outage or a budget stop repeats no completed request (a run the
    budget stopped, even before any row, exits 0 with a warning; the rerun continues it). With
    --feedback and --mixed-out, also writes the weighted mix (recipe `generate.mix`). Prints
    path, sha256, counts and teacher usage as JSON. Exit 2: a recipe without a `generate`
    section, a seed file that is not UTF-8, no seeds, an --out or --mixed-out that is, holds or
    lies inside --feedback (or the one inside the other) or whose parent folder cannot be
    written (a read-only mount: the lock beside it); exit 1: a teacher failure, no row
    survived, or another run writing OUT (or the mix output)."""
    from feinschliff.artifacts import DatasetRef
    from feinschliff.generate import GenerateError, merge_datasets, run_generate
    from feinschliff.generate.outlock import OutputBusy, refuse_overlap
    from feinschliff.generate.stage import InputRefused, budget_note

    cfg = _load(recipe, set_)
    if cfg.generate is None:
        raise Failure(f"{recipe}: the recipe has no `generate` section", code=2)
    if mixed_out is not None and feedback is None:
        raise Failure("--mixed-out needs --feedback (the ingest output to mix with)", code=2)
    if mixed_out is not None and mixed_out.resolve() == out.resolve():
        # the mix would replace the generated rows it is made from
        raise Failure(
            "--mixed-out must differ from --out (the mix reads the generated rows)", code=2
        )
    # all before the generation writes anything (OutputInUse: exit 2, as train's --out)
    refuse_overlap("--out", out, {"--feedback": feedback})
    if mixed_out is not None:
        refuse_overlap("--mixed-out", mixed_out, {"--feedback": feedback, "--out": out})
    fb = None
    if feedback is not None:
        fb = DatasetRef(path=str(feedback.resolve()), sha256=_complete_dir(feedback, "ingest"))
    try:
        ref = run_generate(cfg, out, feedback=fb)
    except InputRefused as exc:  # a seed file that is not UTF-8, no seeds: fix the inputs
        raise Failure(str(exc), code=2) from exc
    except GenerateError as exc:  # another run on --out included (exit 1, as train-stage's)
        raise Failure(str(exc)) from exc
    manifest = json.loads((ref.dir / "manifest.json").read_text())
    result = {
        "path": ref.path,
        "sha256": ref.sha256,
        "counts": manifest["counts"],
        "teacher_usage": manifest["teacher_usage"],
        "stopped_by_budget": manifest["stopped_by_budget"],
    }
    if mixed_out is not None and fb is not None:
        try:
            mixed = merge_datasets(fb, ref, cfg.generate.mix, mixed_out)
        except OutputBusy as exc:
            raise Failure(str(exc)) from exc
        result["mixed"] = mixed.model_dump()
    if manifest["stopped_by_budget"]:
        note = budget_note(
            manifest["stopped_by_budget"], manifest["counts"], manifest["teacher_usage"]
        )
        typer.echo(f"warning: {note}", err=True)
    typer.echo(json.dumps(result, indent=2))
