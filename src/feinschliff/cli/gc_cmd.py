"""`feinschliff gc`: what scheduled runs left under FEINSCHLIFF_HOME that nothing needs.

Named after `git gc`: it removes what nothing refers to any more, and a dry run is the default
(`deployments sync --prune` already names another thing). The rules live in
`feinschliff.housekeeping`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from feinschliff.cli.app import Failure, SetOpt, _load, app


@app.command("gc")
def gc(
    recipes: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Recipes of the use cases to clean (their registry, serving folder and vLLM "
            "servers). Without any: the default registry's use cases; their serving copies "
            "are then all kept (gc cannot ask their servers).",
            show_default=False,
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Delete. Without it: print what would be deleted.")
    ] = False,
    keep_last: Annotated[
        str,
        typer.Option(
            metavar="N",
            help="Keep the serving and registry-cache copies of the last N production versions "
            "of each use case (at least its register.vllm.keep_versions); alias targets are "
            "always kept.",
        ),
    ] = "3",
    older_than: Annotated[
        str,
        typer.Option(
            metavar="DAYS",
            help="Delete only what has not changed for DAYS days (fractions allowed).",
        ),
    ] = "0",
    overrides: SetOpt = None,
) -> None:
    """Show, and with --yes delete, what scheduled runs left under $FEINSCHLIFF_HOME that
    nothing needs: checkpoints of finished trainings (runs/*/train/checkpoints), serving copies
    and registry-cache copies of versions no alias, server or --keep-last needs, and replay
    snapshots (datasets/) no registered version or run records, written over 14 days ago.
    Never the registry, models, venvs, ingest mirrors, caches of generate, an unfinished
    training's checkpoints, or a workdir a run or training holds. Prints one line per folder
    (delete/keep, size, why) and the total.
    Exit 2 on a bad option or recipe."""
    from feinschliff import housekeeping
    from feinschliff.models import feinschliff_home

    policy = housekeeping.Policy(
        keep_last=_whole(keep_last, "--keep-last"),
        older_than_s=_days(older_than) * 86400,
        delete=yes,
    )
    targets = _targets(recipes or [], overrides)
    home = feinschliff_home()
    if not home.is_dir():
        typer.echo(f"nothing to clean: {home} does not exist")
        return

    def show(finding: housekeeping.Finding) -> None:
        verb = ("deleted" if yes else "delete") if finding.delete else "keep"
        typer.echo(
            f"{verb:<8}{_size(finding.size):>10}  {_shown(finding.path, home)}  ({finding.why})"
        )

    found = housekeeping.sweep(home, targets, policy, show)
    gone = [f for f in found if f.delete]
    freed = sum(f.size for f in gone)
    kept = sum(f.size for f in found if not f.delete)
    n = f"{len(gone)} folder{'s' if len(gone) != 1 else ''}"
    if yes:
        typer.echo(f"freed {_size(freed)} ({n}); kept {_size(kept)}")
    else:
        typer.echo(
            f"dry run: {_size(freed)} in {n} would be freed; kept {_size(kept)}; nothing "
            "was deleted: rerun with --yes to delete"
        )


def _targets(paths: list[Path], overrides: list[str] | None) -> dict:
    """Use case -> Target: each recipe's, then the default registry's other use cases."""
    from feinschliff import housekeeping, registry
    from feinschliff.registry_store import default_root

    if overrides and not paths:
        raise Failure("--set changes a recipe: give one", code=2)
    targets: dict[str, housekeeping.Target] = {}
    given: dict[str, tuple[Path, str]] = {}  # use case -> its first recipe, its settings
    for path in paths:
        recipe = _load(path, overrides)
        try:
            root = registry.open_root(recipe.register.registry)
        except registry.RegistryError as exc:  # an unknown scheme, an invalid location
            raise Failure(f"{path}: {exc}", code=2) from exc
        target = housekeeping.Target(
            use_case=recipe.use_case, root=root, vllm=recipe.register.vllm, from_recipe=True
        )
        settings = _settings(target)
        first = given.setdefault(recipe.use_case, (path, settings))
        if first[1] != settings:  # one set of copies and snapshots, two sets of rules
            raise Failure(
                f"{first[0]} and {path} are both for use case {recipe.use_case!r} with a "
                "different registry, vLLM servers or adapter_dir: give one of them",
                code=2,
            )
        targets.setdefault(recipe.use_case, target)
    root = default_root()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.is_dir() and registry.NAME_RE.match(folder.name):
            targets.setdefault(folder.name, housekeeping.Target(use_case=folder.name, root=root))
    return targets


def _settings(target) -> str:
    """What gc's rules read from a recipe: its registry, servers and serving folder."""
    from feinschliff.registry_store import location

    vllm = target.vllm
    servers = [str(s.url) for s in vllm.servers] if vllm else []
    return repr((location(target.root), servers, vllm.adapter_dir if vllm else None))


def _whole(text: str, flag: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise Failure(f"{flag}: expected a whole number >= 0, got {text!r}", code=2)
    return value


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):  # also NaN
        raise Failure(f"--older-than: expected a number of days >= 0, got {text!r}", code=2)
    return value


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KB", "MB", "GB", "TB"):
        size /= 1024
        if size < 1024 or unit == "TB":
            break
    return f"{size:.1f} {unit}"


def _shown(path: Path, home: Path) -> str:
    try:
        return str(path.relative_to(home))
    except ValueError:
        return str(path)
