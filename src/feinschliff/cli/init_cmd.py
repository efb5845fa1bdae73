"""`feinschliff init`: a commented first recipe for a new use case."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from feinschliff.cli.app import Failure, app


@app.command()
def init(
    use_case: Annotated[
        str,
        typer.Argument(
            help="Use-case name: lowercase letters, digits and dashes (the adapter's name in "
            "the registry and on the vLLM server).",
            metavar="USE_CASE",
            show_default=False,
        ),
    ],
    base_model: Annotated[
        str,
        typer.Option(
            "--base-model",
            help="A feinschliff alias (`feinschliff models list`), a Hugging Face id, or a local "
            "model folder (written relative to the recipe).",
            metavar="NAME_OR_PATH",
            show_default=False,
        ),
    ],
    method: Annotated[
        str,
        typer.Option(
            metavar="METHOD", help="Training method: sft, dpo, orpo or kto (train.method)."
        ),
    ] = "sft",
    source: Annotated[
        list[str] | None,
        typer.Option(
            "--source",
            metavar="KIND:PATH_OR_URL",
            help="Feedback source, repeatable; KIND: argilla or langfuse. A PATH is an export "
            "(written relative to the recipe); a URL is a live pull from that server "
            "(argilla:URL?dataset=NAME; more pull settings as ?key=value, e.g. "
            "langfuse:URL?environment=production). Default: the bundled sample exports.",
            show_default=False,
        ),
    ] = None,
    gpu: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Target GPU from configs/hardware.yaml (train.gpu): `run` refuses a training "
            "whose memory estimate does not fit it.",
            show_default=False,
        ),
    ] = None,
    lora_rank: Annotated[
        int | None,
        typer.Option(
            "--lora-rank",
            metavar="RANK",
            help="LoRA rank (train.lora.r, alpha 2 x rank); register.max_lora_rank is set to "
            "the smallest vLLM rank that serves it when the default does not. Default: the recipe model's.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Recipe file to write. Default: recipes/USE_CASE.yaml.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Write a commented first recipe for a new use case: the sections you decide on (base
    model, feedback sources, method, evaluation, gate), only values that differ from the
    defaults, and commented-out examples of the optional ones (generate, judge, vLLM servers,
    schedule). The file passes `feinschliff validate`; an existing file is not replaced
    without --force. Prints the next steps.

    Exit 2: an invalid use-case name, method, source, GPU or LoRA rank, or an existing file."""
    from feinschliff import recipe_scaffold as rs

    path = out or Path("recipes") / f"{use_case}.yaml"
    try:
        rs.check_use_case(use_case)
        rs.check_method(method)
        name = rs.parse_base_model(base_model, path.parent)
        sources = [rs.parse_source(item, path.parent) for item in source or []]
        spec = rs.Scaffold(
            use_case=use_case,
            base_model=name,
            method=method,
            sources=tuple(sources),
            gpu=rs.check_gpu(gpu) if gpu is not None else None,
            lora_rank=rs.check_lora_rank(lora_rank) if lora_rank is not None else None,
        )
        spec, fitted = _fit_gpu(spec, path) if gpu is not None else (spec, "")
        text, _ = rs.render_recipe(spec, path)
        _write(text, path, force=force)
    except rs.ScaffoldError as exc:
        raise Failure(str(exc), code=2) from exc
    if doubt := rs.base_model_doubt(base_model):
        typer.echo(f"warning: --base-model {doubt}", err=True)
    for item, parsed in zip(source or [], sources, strict=True):
        if parsed.path is not None and not Path(item.partition(":")[2]).expanduser().exists():
            typer.echo(f"warning: --source {item}: no such export here", err=True)
    if fitted:
        typer.echo(fitted, err=fitted.startswith("warning:"))
    typer.echo(f"wrote {path} ({use_case}, {method}/trl)")
    typer.echo("next steps:")
    if not sources:
        typer.echo("  # feedback.sources reads the bundled samples: point it at your exports")
    for secret in rs.secrets_of(spec):
        typer.echo(
            f"  export {secret}=...   # or a Prefect Secret block {secret.lower().replace('_', '-')}"
        )
    # quoted: a path with spaces must survive a copy-paste into the shell
    data, at = shlex.quote(str(Path("out") / f"{use_case}-data")), shlex.quote(str(path))
    steps = [
        (f"feinschliff validate --strict {at}", "the recipe and the files it reads"),
        (f"feinschliff ingest {at} --out {data}", "look at the training rows"),
        (
            f"feinschliff estimate {at}{f' --gpu {gpu}' if gpu else ''} --data {data}",
            "memory, fit, GPU-hours, EUR",
        ),
        (f"feinschliff run {at}", "the whole loop as a Prefect flow"),
    ]
    width = max(len(cmd) for cmd, _ in steps)
    for cmd, why in steps:
        typer.echo(f"  {cmd:<{width}}   # {why}")


def _write(text: str, out: Path, *, force: bool) -> None:
    """Write ``out``; an existing file only with ``force`` (replaced in one step, so a
    failed write leaves the old recipe)."""
    from feinschliff.recipe_scaffold import ScaffoldError

    if out.is_dir():
        raise ScaffoldError(f"{out} is a folder: give the recipe file's path with --out")
    if out.exists() and not force:
        raise ScaffoldError(f"{out} exists: not overwritten (--force replaces it)")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:  # a parent that is a file, a read-only folder: a wrong --out
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        raise ScaffoldError(f"cannot write {out}: {exc.strerror or exc}") from None


def _fit_gpu(spec: Any, path: Path) -> tuple[Any, str]:
    """With --gpu, the memory savers the shipped 8B recipes use, as far as the training needs
    them to fit: gradient checkpointing, then the largest micro-batch that fits, with gradient
    accumulation keeping the rows per optimizer step. Returns the spec and a line saying what
    was set, or (``warning:``) why nothing fits or nothing can be estimated here."""
    from dataclasses import replace

    from feinschliff.estimate import EstimateError, estimate_recipe, find_gpu, largest_fitting_batch
    from feinschliff.estimate.shape import GIB
    from feinschliff.recipe_scaffold import render_recipe

    gpu = find_gpu(spec.gpu)
    recipe = render_recipe(spec, path)[1]
    try:
        if estimate_recipe(recipe).training / GIB <= gpu.device_gib:
            return spec, ""
    except EstimateError as exc:  # a model whose shape is not known offline
        why = str(exc).splitlines()[0]
        return spec, f"warning: no memory estimate here ({why}): run `feinschliff estimate`"
    asked, spec = spec, replace(spec, gradient_checkpointing=True)
    recipe = render_recipe(spec, path)[1]
    if estimate_recipe(recipe).training / GIB <= gpu.device_gib:
        return spec, f"set gradient_checkpointing: true, so that the training fits {gpu.name}"
    hp = recipe.train.hyperparameters
    rows = hp.batch_size * hp.gradient_accumulation_steps  # per optimizer step: kept
    fit = largest_fitting_batch(recipe, gpu)
    smallest = 2 if spec.method == "kto" else 1  # KTO estimates its KL term within a batch
    fits = [b for b in range(smallest, fit + 1) if rows % b == 0]
    if not fits:  # nothing written that claims a fit
        return asked, (
            f"warning: the training does not fit {gpu.name} even with gradient checkpointing "
            f"at the smallest micro-batch: `feinschliff estimate {path}` says what would"
        )
    steps = rows // fits[-1]
    spec = replace(spec, batch_size=fits[-1], gradient_accumulation_steps=steps)
    return spec, (
        f"set gradient_checkpointing: true and micro-batch {fits[-1]} x {steps} accumulation "
        f"steps ({rows} rows per optimizer step, as before), so that the training fits {gpu.name}"
    )
