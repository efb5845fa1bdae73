"""`feinschliff registry ...`: inspect and change the adapter registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from feinschliff.cli.app import Failure, registry_app


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
