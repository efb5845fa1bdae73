"""`feinschliff registry history USE_CASE`: a use case's versions over scheduled retraining runs.

One line per registered version, oldest first: when it was registered, what it was trained on,
the gate's verdict and metrics, where it went (production, rolled back, superseded, rejected,
retired); flow runs the gate rejected (registered nothing) as lines without a version, among
them by time. `--json` prints one object per line, `--plot` draws the gate's metrics across
them. Reads only (no lock), as `registry show` and `audit` do. Importing this module
registers the command on the `registry` Typer app.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from feinschliff.cli.app import Failure, os_error_line, registry_app
from feinschliff.cli.registry_cmd import ReadRootOpt, _errors, _known_use_case


@registry_app.command("history")
def registry_history(
    use_case: Annotated[
        str, typer.Argument(metavar="USE_CASE", help="The use case (a recipe's use_case).")
    ],
    root: ReadRootOpt = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric",
            help="A metric to show (repeatable); default: those the gate's rules judged. One "
            "no version recorded: exit 2, naming those recorded.",
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Also draw each metric across versions to this image (FILE.png; .svg and "
            ".pdf work too), marking promoted, rejected and the current production."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per version.")] = False,
) -> None:
    """Every registered version of USE_CASE, oldest first: registered when and by whom, method,
    training rows, base model, started from, the gate's verdict and metrics (candidate value,
    change vs base and vs the production it was compared with), status (production, rolled
    back, superseded, rejected, retired, aliases) and the gate's failed rules. Flow runs the
    gate rejected show among them by time, version '-' (--json: null), status rejected. Fields
    an older version did not record show as a dash."""
    from feinschliff import registry
    from feinschliff.registry_history import gate_metrics, recorded_metrics, use_case_history
    from feinschliff.registry_history_view import history_rows, history_table

    if plot is not None:
        _check_plot_path(plot)
    with _errors():
        r = registry.open_root(root)
        _known_use_case(r, use_case)
        records = use_case_history(r, use_case)
    if not records:  # on stderr with --json: stdout holds only JSON lines
        typer.echo(
            f"no versions of {use_case} in the registry at {registry.location(r)}"
            + ("; no plot written" if plot is not None else ""),
            err=as_json,
        )
        return
    known = recorded_metrics(records)
    unknown = [m for m in metric or [] if m not in known]
    if unknown:
        has = ", ".join(known) if known else "none"
        raise Failure(
            f"--metric {', '.join(unknown)}: no version of {use_case!r} recorded it "
            f"(recorded: {has})",
            code=2,
        )
    shown = list(dict.fromkeys(metric)) if metric else gate_metrics(records)
    if as_json:
        for row in history_rows(records, shown):
            typer.echo(json.dumps(row, ensure_ascii=False))
    else:
        for line in history_table(records, shown):
            typer.echo(line)
    if plot is not None:
        _draw(records, shown, plot, use_case)


def _check_plot_path(plot: Path) -> None:
    """Refuse a path the plot cannot be written to before reading the registry (exit 2)."""
    from matplotlib.backend_bases import FigureCanvasBase

    if plot.is_dir():
        raise Failure(f"--plot {plot}: is a folder, not a file", code=2)
    kinds = FigureCanvasBase.get_supported_filetypes()
    kind = plot.suffix.lower().lstrip(".")
    if kind not in kinds:
        raise Failure(
            f"--plot {plot}: {'no file type' if not kind else f'.{kind} is no image type'} "
            f"(use .png; also {', '.join('.' + k for k in sorted(kinds) if k != 'png')})",
            code=2,
        )
    folder = plot.parent
    if folder.exists() and not folder.is_dir():
        raise Failure(f"--plot {plot}: {folder} is not a folder", code=2)
    if not folder.is_dir():
        raise Failure(f"--plot {plot}: folder {folder} does not exist", code=2)
    if not os.access(folder, os.W_OK | os.X_OK) or (plot.exists() and not os.access(plot, os.W_OK)):
        raise Failure(f"--plot {plot}: not writable", code=2)


def _draw(records, metrics: list[str], out: Path, use_case: str) -> None:
    from feinschliff.registry_history_view import draw_history

    try:
        draw_history(records, metrics, out, use_case=use_case)
    except OSError as exc:  # a full disk, a read-only mount os.access did not see
        raise Failure(f"--plot {out}: cannot write it ({os_error_line(exc)})", code=2) from exc
    typer.echo(f"plot: {out}", err=True)
