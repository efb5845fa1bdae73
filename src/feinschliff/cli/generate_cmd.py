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
    out: Annotated[Path, typer.Option(help="Output directory.")],
    feedback: Annotated[
        Path | None,
        typer.Option(
            help="An ingest output: generated questions duplicating its prompts are dropped."
        ),
    ] = None,
    mixed_out: Annotated[
        Path | None,
        typer.Option(help="Also write the mix of --feedback and the generated rows here."),
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Generate synthetic German training data with the recipe's `generate` section (distilabel
    self-instruct -> teacher answers -> optional judge ratings) and write OUT/sft.jsonl,
    OUT/preference.jsonl, OUT/manifest.json (teacher, template version, counts, drops, sha256),
    OUT/distiset/ and OUT/generate.log. Identical reruns reuse OUT; every teacher reply is
    cached, so a rerun after an outage or a budget stop repeats no completed request. With
    --feedback and --mixed-out, also writes the weighted mix (recipe `generate.mix`)."""
    from feinschliff.artifacts import DatasetRef
    from feinschliff.generate import GenerateError, merge_datasets, run_generate

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
    fb = None
    if feedback is not None:
        fb = DatasetRef(path=str(feedback.resolve()), sha256=_complete_dir(feedback, "ingest"))
    try:
        ref = run_generate(cfg, out, feedback=fb)
    except GenerateError as exc:
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
        mixed = merge_datasets(fb, ref, cfg.generate.mix, mixed_out)
        result["mixed"] = mixed.model_dump()
    if manifest["stopped_by_budget"]:
        typer.echo(f"warning: stopped early ({manifest['stopped_by_budget']})", err=True)
    typer.echo(json.dumps(result, indent=2))
