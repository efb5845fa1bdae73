"""The ``feinschliff`` Typer app and helpers shared by the command modules.

Exit codes: 0 success (``gate``/``run``: promoted), 2 invalid recipe or arguments,
3 gate rejected, 1 any other failure.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from feinschliff.artifacts import COMPLETE
from feinschliff.recipe import Recipe
from feinschliff.recipe_loader import RecipeError, load_recipe

app = typer.Typer(
    help="feinschliff: turn production feedback (Argilla, Langfuse) into LoRA adapters, "
    "evaluate them against the base model, promote them through a gate into a registry.\n\n"
    "Stages: ingest -> (generate) -> train -> evaluate -> gate -> register; `run` chains them "
    "as a Prefect flow (generate when the recipe has a generate section).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
)
models_app = typer.Typer(
    help="Provision base models (demo models ship inside PyPI packages).", no_args_is_help=True
)
registry_app = typer.Typer(
    help=(
        "Inspect and change the adapter registry (a local directory or any fsspec URL): list,"
        " show, history, promote, rollback, retire, audit, reconcile with the vLLM servers."
    ),
    no_args_is_help=True,
)
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


def _check_home() -> None:
    """``FEINSCHLIFF_HOME`` (models, caches, the default registry) must be a folder: a file there
    made `registry list` report an empty registry and other commands fail on "Not a directory"."""
    home = os.environ.get("FEINSCHLIFF_HOME")
    if home and os.path.exists(home) and not os.path.isdir(home):
        typer.echo(f"FEINSCHLIFF_HOME={home} is a file, not a folder", err=True)
        sys.exit(2)
    if home and (why := _unwritable(Path(home))):
        # else a traceback from deep inside a stage (the PII engine's cache, a model fetch)
        typer.echo(
            f"FEINSCHLIFF_HOME={home} is not writable ({why}): models, caches and the default "
            "registry are written there; set FEINSCHLIFF_HOME to a writable folder",
            err=True,
        )
        sys.exit(2)


def _unwritable(folder: Path) -> str | None:
    """Why ``folder`` (or, while it does not exist, the folder it would be created in) cannot
    be written; None when it can. Asks the OS (access(2): a read-only disk counts)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if os.access(existing, os.W_OK | os.X_OK):
        return None
    code = errno.EROFS if _read_only_mount(existing) else errno.EACCES
    return os.strerror(code)


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def os_error_line(exc: OSError) -> str:
    """``<strerror>: <filename>``: an OSError's cause and path, without its errno number.
    ``shutil.Error`` (copytree) holds a list of (src, dst, why): its first failure."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
        failures = [f for f in exc.args[0] if isinstance(f, tuple) and len(f) == 3]
        if failures:
            _, dst, why = failures[0]
            cause = re.sub(r"^\[Errno \d+\] ", "", str(why)).split(": '", 1)[0]
            more = f" (and {len(failures) - 1} more files)" if len(failures) > 1 else ""
            return f"{cause}: {dst}{more}"
    what = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is None:
        return what
    return f"{what}: {exc.filename}{_hf_cache_hint(exc)}"


def _hf_cache_hint(exc: OSError) -> str:
    """Training, evaluation and generation cache datasets under HF_HOME (by default in the
    home folder, read-only in many containers): a refused write there says which setting."""
    from huggingface_hub import constants

    hf = Path(constants.HF_HOME).resolve()
    if not refused_under(exc, hf):
        return ""
    return f" (the Hugging Face cache, HF_HOME={hf}: set HF_HOME to a writable folder)"


def refused_under(exc: OSError, folder: Path) -> bool:
    """Whether the OS refused a write (a read-only mount, no permission) to a path in
    ``folder``."""
    if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
        return False
    if not isinstance(exc.filename, str | bytes):
        return False
    return Path(os.fsdecode(exc.filename)).resolve().is_relative_to(folder.resolve())


def _setup_logging() -> None:
    level = os.environ.get("FEINSCHLIFF_LOG_LEVEL", "INFO").upper()
    if level not in logging.getLevelNamesMapping():  # else every command ends in a traceback
        typer.echo(
            f"FEINSCHLIFF_LOG_LEVEL={os.environ['FEINSCHLIFF_LOG_LEVEL']!r} is not a log level: "
            "use DEBUG, INFO, WARNING or ERROR",
            err=True,
        )
        sys.exit(2)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # Per-request lines from HTTP clients (Prefect API, judge, vLLM) drown the progress output.
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _load(path: Path, overrides: list[str] | None) -> Recipe:
    try:
        return load_recipe(path, overrides or [])
    except RecipeError as exc:
        raise Failure("\n".join(exc.lines), code=2) from exc


def _read_report(path: Path, use_case: str | None = None) -> dict:
    """An evaluate report.json (of ``use_case``); a path that is none, or a report of another
    use case, is an argument error (exit 2)."""
    from feinschliff.pipeline import read_report

    folder = Path(path).parent  # evaluate writes .inputs first and .complete last
    if (folder / ".inputs").exists() and not (folder / COMPLETE).exists():
        raise Failure(
            f"--report {path}: the evaluate that wrote it did not finish (no {COMPLETE} in "
            f"{folder}): rerun evaluate",
            code=2,
        )
    try:
        report = read_report(path)
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not valid JSON"
        raise Failure(
            f"--report {path}: {why} (give the report.json that `evaluate` wrote)", code=2
        ) from exc
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict):
        raise Failure(f"--report {path}: not an evaluate report (no metrics)", code=2)
    for role, entries in report["metrics"].items():  # role -> metric -> {value, ...}
        if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
            raise Failure(
                f"--report {path}: not an evaluate report (metrics.{role} is no mapping of "
                "metric entries)",
                code=2,
            )
    about = report.get("use_case")
    if use_case is not None and about is not None and about != use_case:
        # another use case's scores would decide (and with register, promote) this one
        raise Failure(
            f"--report {path} evaluated use case {about!r}, the recipe is {use_case!r}", code=2
        )
    return report


# Stages whose outputs a command takes as ``what``: train reads a mixed or generated dataset
# as it reads an ingest output.
_TAKES = {"ingest": ("ingest", "generate", "mix")}


def _complete_dir(path: Path, what: str) -> str:
    """The content hash of a finished ``what`` output; exit 2 when ``path`` is none, or the
    output of another stage (an ingest output given as ``--adapter``)."""
    from feinschliff.artifacts import completed_hash, finished_stage

    takes = _TAKES.get(what, (what,))
    kinds = ", ".join(takes[:-1]) + f" or {takes[-1]}" if len(takes) > 1 else what
    if not path.exists():
        raise Failure(f"{path} does not exist (expected a complete {kinds} output)", code=2)
    digest = completed_hash(path)
    if digest is None:
        marker = "changed since it was finished" if (path / ".complete").exists() else "none"
        raise Failure(
            f"{path} is not a complete {kinds} output (no valid .complete marker: {marker})",
            code=2,
        )
    stage = finished_stage(path)
    if stage is not None and stage not in takes:
        raise Failure(f"{path} is {_a(stage)} output, not {_a(kinds)} output", code=2)
    return digest


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def human_answer(gate: Any, approve: bool | None, by: str | None, comment: str) -> Any:
    """The ``--approve/--reject --by --comment`` of `gate` and `register` as an ``Approval``
    (None: not given). Exit 2 where it would be ignored: ``--by``/``--comment`` alone, or an
    answer to a gate without a `require_approval` rule (`--reject` would still have promoted)."""
    from feinschliff.gate import Approval
    from feinschliff.specs.evaluate import RequireApprovalRule

    if approve is None:
        if by is not None or comment:
            raise Failure("--by and --comment go with --approve or --reject", code=2)
        return None
    if not any(isinstance(rule, RequireApprovalRule) for rule in gate.rules):
        flag = "--approve" if approve else "--reject"
        raise Failure(
            f"{flag}: the recipe's gate has no require_approval rule to answer "
            "(its metric rules alone decide)",
            code=2,
        )
    return Approval(approved=approve, by=by or "cli", comment=comment)
