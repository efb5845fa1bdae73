"""`feinschliff train`: a recipe + an ingest output -> a LoRA adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from feinschliff.cli.app import Failure, RecipeArg, SetOpt, _complete_dir, _load, app


@app.command()
def train(
    recipe: RecipeArg,
    data: Annotated[
        Path, typer.Option(help="A finished ingest (or generate, or mixed) output directory.")
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Output directory: new, empty or an earlier train output (reused when the "
            "inputs are unchanged, resumed after a kill, else replaced); not inside --data."
        ),
    ],
    set_: SetOpt = None,
) -> None:
    """Train a LoRA adapter (SFT, DPO, ORPO or KTO; backend TRL or Axolotl; optionally on several
    processes with accelerate) and write OUT/adapter/ (PEFT + README.md model card),
    OUT/metrics.json (loss curve, eval loss, tokens/s, peak memory, wall time) and OUT/loss.png,
    and print the adapter's path and sha256 as JSON. With train.init_from: production it
    continues the production adapter of the recipe's registry. A killed run resumes from its
    last complete checkpoint when rerun; refused up front (exit 2, nothing written): a recipe
    with train.gpu whose memory estimate does not fit that GPU (see `estimate`), a base model
    folder that is not there, LoRA target modules the model does not have (or lm_head),
    chat_template: model on a model without a template, and an OUT inside DATA (or holding it).
    Exit 1: a failed training, one that diverged (NaN adapter), no row within max_length, or an
    OUT another run is writing."""
    from feinschliff.artifacts import DatasetRef
    from feinschliff.train import run_train
    from feinschliff.train.stage import RecipeRefused, TrainError

    cfg = _load(recipe, set_)
    ref = DatasetRef(path=str(data.resolve()), sha256=_complete_dir(data, "ingest"))
    try:
        adapter = run_train(cfg, ref, out)
    except RecipeRefused as exc:  # too small a train.gpu (as `run`, `estimate`), no such model
        raise Failure(str(exc), code=2) from exc
    except TrainError as exc:
        raise Failure(str(exc)) from exc
    typer.echo(json.dumps(adapter.model_dump(), indent=2))
