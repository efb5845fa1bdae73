"""``feinschliff validate`` and ``feinschliff schema``: recipes checked and described."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from feinschliff.cli.app import Failure, SetOpt, app
from feinschliff.recipe import Recipe
from feinschliff.recipe_inputs import missing_inputs
from feinschliff.recipe_loader import RecipeError, dump_resolved, load_recipe, recipe_json_schema


@app.command()
def validate(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe YAML files.", show_default=False)],
    set_: SetOpt = None,
    show: Annotated[
        bool,
        typer.Option(
            "--print",
            help="Print each valid recipe resolved (all defaults filled in) as YAML on stdout; "
            "the `ok` lines then go to stderr.",
        ),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="A file the recipe reads that is missing here (feedback export, seed file, "
            "local model folder) is a problem (exit 2), not a warning: for a recipe run on "
            "this machine. A base model here (a folder, a fetched alias) is also checked "
            "against the recipe: LoRA target modules it has, a chat template; with train.gpu, "
            "the memory estimate against that GPU, as `run` checks it.",
        ),
    ] = False,
) -> None:
    """Check recipes against the schema. Prints one `<file>: <dotted.path>: <message>` line per
    problem (stderr) and exits 2, or `<file>: ok (use case, method/backend)` per recipe (stdout)
    and exits 0 when every recipe is valid. Files the recipe reads that do not exist here
    (feedback exports, seed files, local model folders) are `<file>: warning: ...` lines on
    stderr: a recipe may be meant for a worker with other volumes (`--strict`: problems).
    Writes nothing."""
    failed = False
    for path in recipes:
        try:
            recipe = load_recipe(path, set_ or [])
        except RecipeError as exc:
            failed = True
            for line in exc.lines:
                typer.echo(line, err=True)
            continue
        missing = missing_inputs(recipe)
        for where, file in missing:
            kind = "" if strict else "warning: "
            typer.echo(f"{path}: {kind}{where}: {file} does not exist here", err=True)
        if strict and missing:
            failed = True
            continue
        if strict and (problem := model_problem(recipe) or fit_problem(recipe)):
            typer.echo(f"{path}: {problem}", err=True)
            failed = True
            continue
        # with --print, stdout is the resolved recipe alone (so it can be saved and used)
        ok = f"{path}: ok ({recipe.use_case}, {recipe.train.method}/{recipe.train.backend})"
        typer.echo(ok, err=show)
        if show:  # several recipes: one YAML document each
            typer.echo(("---\n" if len(recipes) > 1 else "") + dump_resolved(recipe))
    if failed:
        raise typer.Exit(2)


def model_problem(recipe: Recipe) -> str | None:
    """What `train` would refuse about the base model, where the model is here without a
    download (a folder, a fetched alias): target modules it lacks (PEFT would error or train
    fewer layers), lm_head, no chat template. A hub id is checked when train loads it."""
    from feinschliff.models import ModelFetchError, resolve_model
    from feinschliff.train.checks import RecipeRefused, check_model_fits_recipe

    try:
        folder = resolve_model(recipe.base_model.name, fetch=False)
    except ModelFetchError:  # an alias not fetched yet: nothing to read here
        return None
    if not Path(folder).is_dir():
        return None
    try:
        check_model_fits_recipe(recipe, folder)
    except RecipeRefused as exc:
        return str(exc)
    return None


def fit_problem(recipe: Recipe) -> str | None:
    """The memory check `run` and `train` make before anything starts, where ``train.gpu`` is
    set: a training that cannot fit that GPU, or a model the estimate cannot read."""
    if recipe.train.gpu is None:
        return None
    from feinschliff.estimate import EstimateError, check_training_fits

    try:
        check_training_fits(recipe)
    except EstimateError as exc:
        return f"train.gpu: {exc}"
    return None


@app.command()
def schema(
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the recipe JSON Schema (for editors: `# yaml-language-server: $schema=...`)."""
    text = json.dumps(recipe_json_schema(), indent=2, ensure_ascii=False) + "\n"
    if out:
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:  # a missing folder, a folder given as --out: a wrong argument
            raise Failure(f"cannot write {out}: {exc.strerror or exc}", code=2) from exc
    else:
        typer.echo(text, nl=False)
