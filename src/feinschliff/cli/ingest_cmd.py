"""`feinschliff ingest`: feedback exports -> training data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from feinschliff.cli.app import Failure, RecipeArg, SetOpt, _load, app


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
