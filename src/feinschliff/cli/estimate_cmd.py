"""`feinschliff estimate`: memory and cost of a recipe's training, before it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from feinschliff.cli.app import Failure, SetOpt, _complete_dir, _load, app


@app.command()
def estimate(
    recipe: Annotated[
        Path | None,
        typer.Argument(help="Recipe YAML file (omit with --reference).", show_default=False),
    ] = None,
    gpu: Annotated[
        str | None,
        typer.Option(
            help="Only this GPU from configs/hardware.yaml or the file FEINSCHLIFF_HARDWARE "
            "names (default: all of them; an unknown name or --cpu: exit 2)."
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="A finished ingest (or generate/mix) output: count its trained tokens for "
            "GPU-hours and rent EUR (without it those columns say n/a)."
        ),
    ] = None,
    cpu: Annotated[
        bool,
        typer.Option(
            "--cpu",
            help="Estimate a CPU training (in RAM) instead of a GPU one, against this "
            "machine's total RAM (no GPU table, no cost; not with --gpu).",
        ),
    ] = False,
    mfu: Annotated[
        float | None,
        typer.Option(
            help="Model FLOPs utilisation assumed for the GPU-hours and rent EUR (default: "
            "0.31, measured on an H100 for full-length batches). Only matters with --data.",
            min=0.01,
            max=1,
            show_default=False,
        ),
    ] = None,
    reference: Annotated[
        bool,
        typer.Option(
            "--reference",
            help="Print the talk's 8B table under its own assumptions instead (alone: with a "
            "RECIPE or another option, exit 2).",
        ),
    ] = False,
    set_: SetOpt = None,
) -> None:
    """Estimate the memory of RECIPE's training (weights by dtype/4-bit, LoRA parameters,
    gradients, optimizer states, activations, runtime) and of serving its adapter (KV cache),
    compare with the GPUs in configs/hardware.yaml (fits or not, the largest micro-batch that
    fits, GPU-hours and EUR for the --data dataset, rent-vs-buy break-even) and print the
    assumptions. Writes nothing."""
    from feinschliff import estimate as est

    if reference:
        given = [
            what
            for what, value in (
                ("RECIPE", recipe),
                ("--gpu", gpu),
                ("--data", data),
                ("--cpu", cpu),
                ("--mfu", mfu),
                ("--set", set_),
            )
            if value
        ]
        if given:  # the table has its own assumptions: these would go unseen
            raise Failure(
                f"--reference prints the talk's table under its own assumptions and takes no "
                f"{', '.join(given)}: leave out --reference to estimate a recipe",
                code=2,
            )
        _print_reference(est)
        return
    mfu = mfu or est.DEFAULT_MFU
    if recipe is None:
        raise Failure("give a RECIPE (or --reference)", code=2)
    if cpu and gpu:  # the GPU table is not printed for a CPU training: --gpu would go unseen
        raise Failure("--gpu and --cpu exclude each other: give one of them", code=2)
    cfg = _load(recipe, set_)
    if data:  # a failed or half-written ingest output (no .complete) is not a dataset
        _complete_dir(data, "ingest")
    try:
        result = est.estimate_recipe(cfg, on_gpu=not cpu)
        gpus = [est.find_gpu(gpu)] if gpu else est.load_gpus()
        per_row, how = est.row_tokens(cfg, data) if data else ([], "")
        tokens = est.trained_tokens(cfg, per_row) if data else None
    except (est.EstimateError, ValueError) as exc:
        raise Failure(str(exc), code=2) from exc

    typer.echo(f"{cfg.use_case}: {cfg.train.method} on {cfg.base_model.name}")
    typer.echo(f"  {'parameters':<20} {result.n_params / 1e9:9.3f} B")
    typer.echo(f"  {'trainable (LoRA)':<20} {result.trainable:>11,}")
    typer.echo("memory")
    for name, value in result.rows.items():
        typer.echo(f"  {name:<20} {est.fmt_gib(value):>12}")
    typer.echo(f"  {'= training':<20} {est.fmt_gib(result.training):>12}")
    overhead = est.fmt_gib(result.rows["runtime_overhead"])
    typer.echo(
        f"  {'= inference':<20} {est.fmt_gib(result.inference):>12}  "
        f"(weights + adapter + KV + {overhead} runtime)"
    )
    if cpu:
        ram = est.total_ram_bytes()
        if ram is None:
            typer.echo("  (this machine's RAM is unknown: no fit verdict)")
        else:
            fits = "fits" if result.training <= ram else "does NOT fit"
            typer.echo(
                f"  {'this machine':<20} {est.fmt_gib(ram):>12}  total RAM: training {fits}"
                " (before what else runs)"
            )
    if tokens is not None:
        typer.echo(f"dataset: {tokens:,} trained tokens ({how})")
    if not cpu:
        typer.echo(
            f"\n{'gpu':<11} {'GiB/dev':>7} {'fits':>5} {'max batch':>9} {'GPU-h':>8} "
            f"{'rent EUR':>9} {'buy EUR':>8} {'break-even h':>12}"
        )
        for g in gpus:
            fits = result.training / est.GIB <= g.device_gib
            best = est.largest_fitting_batch(cfg, g)
            cost = est.training_cost(cfg, g, tokens or 0, mfu=mfu)
            hours = f"{cost['gpu_hours']:.3g}" if tokens is not None else "n/a"
            rent = f"{cost['rent_eur']:.3g}" if tokens is not None else "n/a"
            typer.echo(
                f"{g.name:<11} {g.device_gib:>7.0f} {'yes' if fits else 'NO':>5} {best:>9} "
                f"{hours:>8} {rent:>9} {g.price_eur:>8.0f} {cost['break_even_hours']:>12.0f}"
            )
    typer.echo("\nassumptions:")
    for line in result.assumptions:
        typer.echo(f"  - {line}")
    if not cpu:
        typer.echo(
            f"  - cost: tokens x FLOPs/token ({'6' if cfg.train.hyperparameters.gradient_checkpointing else '4'}N"
            f"{_extra_forwards(cfg.train.method)}) / (bf16 peak x MFU "
            f"{mfu:.0%}); break-even = purchase price / hourly rent"
        )
    note = est.short_rows_note(cfg, per_row, mfu) if data and not cpu else None
    if note:
        typer.echo(f"\nnote: {note}")
    if tokens is None and not cpu:
        typer.echo("  - pass --data INGEST_DIR for GPU-hours and EUR")


def _print_reference(est) -> None:
    typer.echo(
        "The talk's table ('LLMs im Selbstbetrieb', slide 'Speicherbedarf'), recomputed, GiB:"
    )
    fp32, int4 = est.reference_table(), est.reference_table(dtype="int4")
    for name in fp32:
        typer.echo(f"  {name:<12} fp32 {fp32[name]:7.2f}   int4 {int4[name]:7.2f}")
    doc = (est.reference_table.__doc__ or "").split("\n\n")[1]
    typer.echo("assumptions: " + " ".join(doc.split()))


def _extra_forwards(method: str) -> str:
    """The FLOPs per token beyond the policy's forward and backward (``estimate.flops``)."""
    if method == "kto":  # TRL's default KTO loss also runs both models on the KL pairs
        return " + 2N reference + 4N KL pairs"
    return " + 2N reference" if method == "dpo" else ""
