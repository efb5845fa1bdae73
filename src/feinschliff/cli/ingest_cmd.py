"""`feinschliff ingest`: feedback exports -> training data (with a recipe, or ad hoc)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from feinschliff.cli.app import Failure, SetOpt, _load, app

SourceOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--source",
        help="Ad-hoc source KIND:PATH, KIND = argilla or langfuse, PATH a file or directory "
        "(format detected). Repeatable; instead of a RECIPE (not both).",
        show_default=False,
    ),
]
PiiOpt = Annotated[
    str | None,
    typer.Option(
        "--pii",
        help="off | redact | pseudonymize (key: the recipe's feedback.pii.key_secret, an "
        "environment variable or Prefect Secret, default FEINSCHLIFF_PII_KEY). Default: the "
        "recipe's feedback.pii.mode, ad hoc: redact. off: rows are not scanned and may "
        "contain PII (the dataset card says so).",
        show_default=False,
    ),
]


@app.command()
def ingest(
    out: Annotated[
        Path,
        typer.Option(help="Output directory: new, empty or an earlier ingest output (replaced)."),
    ],
    recipe: Annotated[
        Path | None,
        typer.Argument(help="Recipe YAML file (omit with --source).", show_default=False),
    ] = None,
    source: SourceOpt = None,
    pii: PiiOpt = None,
    set_: SetOpt = None,
) -> None:
    """Turn feedback exports (Argilla, Langfuse; files, folders or live pulls) into training data.

    Writes to OUT: sft.jsonl, preference.jsonl, kto.jsonl (training), heldout/ (the same for
    held-out prompts), quarantine.jsonl (malformed records with source, location, reason, raw
    value), manifest.json (counts per source/output/drop reason, PII findings, input sha256,
    watermarks, output sha256) and README.md (dataset card). PII is scrubbed before writing.

    With a RECIPE its `feedback` section is used; rows holding eval data that `evaluate` reads
    (its tasks; the bundled judge questions when the judge asks them) are dropped.
    Ad hoc: `--source argilla:PATH --source langfuse:PATH [--pii MODE]`, decontaminated against
    every bundled lm-eval task (not the judge questions). `--set feedback.rules.min_rating=3`
    overrides work in both modes (ad hoc: feedback.* only). Prints the output's path, sha256
    and counts as JSON.
    OUT must be new, empty or an earlier ingest output (which is replaced); any other folder,
    or one another ingest is writing, is refused and nothing in it is touched. A failed run leaves manifest.json with
    "status": "failed" and the error, a README.md whose first line says so, and no .complete
    (train, evaluate, generate and estimate --data refuse it).
    Exit 2: invalid arguments, an output folder in use, an export that matches no known
    format, or pull credentials missing or refused (the message names each key's variable or
    Secret block, never its value); 1: other failures (e.g. more quarantined than
    feedback.max_quarantine_fraction, an export file that cannot be read to its end, such as a
    truncated page, or a live pull whose server cannot be reached or answers with no API page:
    one line names the server, the endpoint and the cause; the pull's watermark stays as it
    was).
    """
    from feinschliff.artifacts import OutputInUse
    from feinschliff.ingest.stage import IngestError, InvalidSource, MissingSecret, run_ingest
    from feinschliff.recipe import evaluated_sets

    if (recipe is None) == (not source):
        raise Failure("give either a RECIPE or one or more --source KIND:PATH", code=2)
    if recipe is not None:
        loaded = _load(recipe, [*(set_ or []), *([f"feedback.pii.mode={pii!r}"] if pii else [])])
        spec, tasks = loaded.feedback, evaluated_sets(loaded)
    else:
        spec, tasks = _adhoc_spec(source or [], pii, set_ or []), _bundled_tasks()
    try:
        ref = run_ingest(spec, out, eval_tasks=tasks)
    except (InvalidSource, MissingSecret, OutputInUse) as exc:
        raise Failure(str(exc), code=2) from exc
    except IngestError as exc:
        raise Failure(str(exc)) from exc
    manifest = json.loads((ref.dir / "manifest.json").read_text())
    typer.echo(
        json.dumps({"path": ref.path, "sha256": ref.sha256, "counts": manifest["counts"]}, indent=2)
    )


def _adhoc_spec(sources: list[str], pii: str | None, overrides: list[str]) -> Any:
    from pydantic import ValidationError

    from feinschliff.recipe import FeedbackSpec
    from feinschliff.recipe_loader import apply_override, format_errors

    parsed = []
    for item in sources:
        kind, sep, path = item.partition(":")
        if not sep or kind not in ("argilla", "langfuse") or not path:
            raise Failure(f"--source {item!r}: expected argilla:PATH or langfuse:PATH", code=2)
        parsed.append({"kind": kind, "path": str(Path(path).expanduser().resolve())})
    pii_mode = {"mode": pii} if pii else {}  # the default lives in PiiSpec
    data: dict[str, Any] = {"feedback": {"sources": parsed, "pii": pii_mode}}
    for item in overrides:
        if not item.startswith("feedback."):
            raise Failure(f"--set {item}: ad-hoc mode only takes feedback.* overrides", code=2)
        try:
            apply_override(data, item)
        except ValueError as exc:
            raise Failure(f"--set {item}: {exc}", code=2) from exc
    try:
        return FeedbackSpec.model_validate(data["feedback"])
    except ValidationError as exc:
        lines = format_errors("ingest", exc, data["feedback"], {}, prefix="feedback")
        raise Failure("\n".join(lines), code=2) from None


def _bundled_tasks() -> list[str]:
    from feinschliff.paths import bundled_tasks_dir

    return sorted(p.stem for p in bundled_tasks_dir().glob("*.jsonl"))
