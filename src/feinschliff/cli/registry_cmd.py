"""`feinschliff registry ...`: inspect the adapter registry, move aliases, sync vLLM servers.

Alias changes are compare-and-swap: `--expect` names the production version you saw (default:
the one read when the command starts); if it moved meanwhile the command fails with a conflict
(exit 1) and changes nothing. With `--recipe`, promote and rollback preflight the version against
its serving settings; if its `register.vllm` lists servers they go live: the version is loaded
and verified on every replica before the alias moves (on the registry `--root` names when given,
else the recipe's).
The registry may live on any fsspec URL (see the README's registry section for lock semantics).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from feinschliff.cli.app import Failure, RecipeArg, SetOpt, _load, registry_app
from feinschliff.recipe import Recipe

_ROOT_HELP = "Registry root: a directory or fsspec URL (file://, s3://bucket/registry, ...)"
RootOpt = Annotated[
    str | None,
    typer.Option(
        help=f"{_ROOT_HELP}; default: --recipe's register.registry, else "
        "$FEINSCHLIFF_HOME/registry."
    ),
]
# list, show and audit take no recipe: a registry named in one is passed as --root
ReadRootOpt = Annotated[
    str | None, typer.Option(help=f"{_ROOT_HELP}; default: $FEINSCHLIFF_HOME/registry.")
]
RecipeOpt = Annotated[
    Path | None,
    typer.Option(
        help="Recipe: its registry (unless --root), and its vLLM servers to update "
        "(register.vllm). Its use_case must be USE_CASE (else exit 2)."
    ),
]
# the shared --set, but here it only changes a --recipe
RecipeSetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a value of the --recipe: dotted.path=value (YAML-parsed). Repeatable; "
        "needs --recipe (exit 2 without).",
    ),
]
ExpectOpt = Annotated[
    str | None,
    typer.Option(
        help="The production version you saw ('none': there was none), compared before the "
        "alias moves: another one means a conflict, exit 1, nothing changed (a version the "
        "registry does not have: exit 2). Default: the production read when the command starts."
    ),
]
WhyOpt = Annotated[str, typer.Option(help="Reason, recorded in the audit log.")]


@registry_app.command("list")
def registry_list(
    root: ReadRootOpt = None,
    use_case: Annotated[
        list[str] | None,
        typer.Option(
            "--use-case",
            help="Only this use case (a recipe's use_case); repeatable. One the registry does "
            "not have: exit 2, naming those it has.",
        ),
    ] = None,
) -> None:
    """List registered adapter versions with their aliases (and `retired`), of every use case
    in the registry or of --use-case."""
    from feinschliff.registry import list_registry, open_root
    from feinschliff.registry_store import location, store_of

    with _errors():
        r = open_root(root)
        there = store_of(r).exists("")
        if not there and root is not None:  # a typo, not an empty registry
            raise Failure(f"no registry at {location(r)} (--root)", code=2)
        for name in use_case or []:
            _known_use_case(r, name)
        rows = list_registry(r, use_case) if there else []
    if not rows:
        if use_case:  # the use case is there (checked), with no complete version yet
            typer.echo(f"no versions of {', '.join(use_case)} in the registry at {location(r)}")
        else:
            typer.echo(f"registry is empty ({location(r)})")
        return
    width = max(20, *(len(row["use_case"]) for row in rows))  # names may be 63 characters
    typer.echo(
        f"{'use case':<{width}} {'version':<8} {'aliases':<22} {'method':<6} {'created':<21} sha256"
    )
    for row in rows:
        typer.echo(
            f"{row['use_case']:<{width}} {row['version']:<8} {','.join(row['aliases']) or '-':<22} "
            f"{row['method'] or '-':<6} {row['created_at']:<21} {row['adapter_sha256']}"
        )


@registry_app.command("show")
def registry_show(
    use_case: Annotated[
        str, typer.Argument(metavar="USE_CASE", help="The use case (a recipe's use_case).")
    ],
    version: Annotated[str | None, typer.Argument(help="Version; omit for the aliases.")] = None,
    root: ReadRootOpt = None,
) -> None:
    """Print a version's manifest (lineage: recipe, base model, data, metrics, gate decision),
    or without VERSION the use case's aliases, versions and retired versions. A gate decision
    the audit log recorded after registration (a human's approval) follows on stderr."""
    from feinschliff import registry
    from feinschliff.cli.registry_show import decision_lines, later_decision

    later = None
    with _errors():
        r = registry.open_root(root)
        _known_use_case(r, use_case)
        if version is not None:
            _known_version(r, use_case, version)
            out: Any = registry.manifest(r, use_case, version)
            later = later_decision(registry.audit_log(r, use_case), version, out)
        else:
            out = {
                "aliases": registry.read_aliases(r, use_case),
                "versions": registry.versions(r, use_case),
                "retired": registry.retired(r, use_case),
            }
    typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
    for line in decision_lines(later, out) if later is not None else []:
        typer.echo(line, err=True)  # stdout stays the manifest's JSON


@registry_app.command("audit")
def registry_audit(
    use_case: Annotated[
        str, typer.Argument(metavar="USE_CASE", help="The use case (a recipe's use_case).")
    ],
    root: ReadRootOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Print the append-only audit log: who, when, what (register, alias from -> to, gate
    decision, approval, retire, a flow run the gate rejected) and why."""
    from feinschliff import registry
    from feinschliff.cli.registry_show import audit_line

    with _errors():
        r = registry.open_root(root)
        _known_use_case(r, use_case)
        entries = registry.audit_log(r, use_case)
    for e in entries:
        typer.echo(json.dumps(e, ensure_ascii=False) if as_json else audit_line(e))


@registry_app.command("promote")
def registry_promote(
    use_case: Annotated[
        str, typer.Argument(metavar="USE_CASE", help="The use case (a recipe's use_case).")
    ],
    version: Annotated[
        str, typer.Argument(metavar="VERSION", help="A registry version, e.g. v0003.")
    ],
    expect: ExpectOpt = None,
    why: WhyOpt = "promoted via CLI",
    recipe: RecipeOpt = None,
    root: RootOpt = None,
    set_: RecipeSetOpt = None,
) -> None:
    """Make VERSION production (previous := old production). With a recipe: preflight against
    its serving settings (exit 2 if VERSION does not fit); if it lists vLLM servers, load +
    verify on every replica, move the alias, switch the served name and unload superseded
    versions. Exit 1 on a conflict (the alias moved meanwhile)."""
    from feinschliff import registry
    from feinschliff.serving.publish import publish_version

    cfg = _recipe_for(recipe, set_, use_case)
    with _errors():
        r = _root_for(cfg, root)
        _known_use_case(r, use_case)  # before the lock, which would create the folder
        _known_version(r, use_case, version)  # a typo is a wrong argument, as for `show`
        expected = _expected(expect, r, use_case)
        if cfg is not None:
            _print_report(publish_version(cfg, version, why=why, expected=expected, root=r))
        else:
            registry.promote(r, use_case, version, why=why, expected=expected)
    typer.echo(f"{use_case}: production = {version}")


@registry_app.command("rollback")
def registry_rollback(
    use_case: Annotated[
        str, typer.Argument(metavar="USE_CASE", help="The use case (a recipe's use_case).")
    ],
    expect: ExpectOpt = None,
    why: WhyOpt = "rollback via CLI",
    recipe: RecipeOpt = None,
    root: RootOpt = None,
    set_: RecipeSetOpt = None,
) -> None:
    """Swap production and previous. With a recipe the previous version is preflighted against
    its serving settings (max_lora_rank, base model); if it lists vLLM servers, it is loaded and
    verified on every replica first, then the served name switches. Exit 1 on a conflict (the
    alias moved meanwhile) or when there is no previous version."""
    from feinschliff import registry
    from feinschliff.serving.publish import rollback_version

    cfg = _recipe_for(recipe, set_, use_case)
    with _errors():
        r = _root_for(cfg, root)
        _known_use_case(r, use_case)  # before the lock, which would create the folder
        expected = _expected(expect, r, use_case)
        if cfg is not None:
            _print_report(rollback_version(cfg, why=why, expected=expected, root=r))
            aliases = registry.read_aliases(r, use_case)
        else:
            aliases = registry.rollback(r, use_case, why=why, expected=expected)
    typer.echo(f"{use_case}: production = {aliases.get('production')}")


@registry_app.command("retire")
def registry_retire(
    use_case: Annotated[
        str, typer.Argument(metavar="USE_CASE", help="The use case (a recipe's use_case).")
    ],
    version: Annotated[
        str, typer.Argument(metavar="VERSION", help="A registry version, e.g. v0003.")
    ],
    why: Annotated[str, typer.Option(help="Reason (required), recorded in the audit log.")],
    recipe: RecipeOpt = None,
    root: RootOpt = None,
    set_: RecipeSetOpt = None,
) -> None:
    """Mark VERSION as never to be served again (refused while it is production, exit 1); drops
    the candidate/previous aliases on it. With a recipe's vLLM servers, reconciles them after."""
    from feinschliff import registry
    from feinschliff.serving.deploy import reconcile
    from feinschliff.serving.preflight import check_recipe_served_model

    cfg = _recipe_for(recipe, set_, use_case)
    with _errors():
        if cfg is not None:  # before retiring: the servers it reconciles must serve base_model
            check_recipe_served_model(cfg)
        r = _root_for(cfg, root)
        _known_use_case(r, use_case)  # before the lock, which would create the folder
        _known_version(r, use_case, version)
        before = registry.retired(r, use_case).get(version)
        registry.retire(r, use_case, version, why=why)
        if cfg is not None and cfg.register.vllm is not None:
            _print_report(reconcile(r, use_case, cfg.register.vllm))
    if before is not None:
        typer.echo(
            f"{use_case}/{version}: already retired at {before.get('at')} "
            f"({before.get('why')}); unchanged"
        )
        return
    typer.echo(f"{use_case}/{version}: retired")


@registry_app.command("reconcile")
def registry_reconcile(
    recipe: RecipeArg,
    root: Annotated[
        str | None, typer.Option(help=f"{_ROOT_HELP}; default: the recipe's register.registry.")
    ] = None,
    allow_unserve: Annotated[
        bool,
        typer.Option(
            "--allow-unserve",
            help="Unload the use-case name even though the registry has no production version "
            "(refused otherwise: a wrong registry must not take it away from clients). A "
            "registry without the use case is refused even so: to stop serving a use case "
            "that was removed, unload it on the servers (vLLM's /v1/unload_lora_adapter).",
        ),
    ] = False,
    set_: SetOpt = None,
) -> None:
    """Make the recipe's vLLM servers serve exactly what the registry says (production under the
    use-case name, kept versions as NAME@VERSION): load missing, switch stale, unload extra,
    verify each change with a completion. Idempotent; prints every action. A recipe without
    register.vllm servers is refused (exit 2). --root: the registry to follow instead of the
    recipe's (as with `promote --recipe R --root X`); a registry without the use case is
    refused (exit 2), no server is touched."""
    from feinschliff.serving.deploy import reconcile
    from feinschliff.serving.preflight import check_recipe_served_model

    cfg = _load(recipe, set_)
    if cfg.register.vllm is None:
        raise Failure("the recipe has no register.vllm servers to reconcile", code=2)
    with _errors():
        check_recipe_served_model(cfg)  # adapters were checked on base_model, not on another
        r = _root_for(cfg, root)
        _known_use_case(r, cfg.use_case)  # before the lock, which would create the folder
        report = reconcile(r, cfg.use_case, cfg.register.vllm, allow_unserve=allow_unserve)
    _print_report(report)


def _known_use_case(root: Any, use_case: str) -> None:
    """A read of a use case the registry does not have is a wrong argument (exit 2), not an
    empty answer. Object stores have no empty folders: a use case exists once it holds a file."""
    from feinschliff.registry import NAME_RE, use_case_dir
    from feinschliff.registry_store import location, store_of

    use_case_dir(root, use_case)  # an invalid name: InvalidName, exit 2
    st, where = store_of(root), location(root)
    if st.exists(use_case):
        return
    if not st.exists(""):
        raise Failure(f"no registry at {where} (so no use case {use_case!r})", code=2)
    known = [n for n in st.listdir("") if NAME_RE.match(n) and st.isdir(n)]
    has = f"it has {', '.join(known)}" if known else "it has no use cases yet"
    raise Failure(f"no use case {use_case!r} in the registry at {where} ({has})", code=2)


def _known_version(root: Any, use_case: str, version: str, what: str = "version") -> None:
    """An unknown version is a wrong argument (exit 2) that names the versions there are."""
    from feinschliff import registry

    known = registry.versions(root, use_case)
    if version not in known:
        has = f"it has {', '.join(known)}" if known else "it has no versions yet"
        raise Failure(f"no {what} {version!r} of {use_case!r} in the registry ({has})", code=2)


def _recipe_for(path: Path | None, overrides: list[str] | None, use_case: str) -> Recipe | None:
    if path is None:
        if overrides:  # nothing to override: the change would happen without what was asked
            raise Failure("--set changes a recipe: give --recipe too", code=2)
        return None
    cfg = _load(path, overrides)
    if cfg.use_case != use_case:
        raise Failure(f"the recipe is for use case {cfg.use_case!r}, not {use_case!r}", code=2)
    return cfg


def _root_for(cfg: Recipe | None, root: str | None) -> Any:
    """--root when given (also with --recipe: its servers then serve that registry), else the
    recipe's registry, else the default."""
    from feinschliff.registry import open_root
    from feinschliff.serving.publish import registry_root

    return registry_root(cfg) if cfg is not None and root is None else open_root(root)


def _expected(expect: str | None, root: Any, use_case: str) -> Any:
    from feinschliff.registry import UNSET

    if expect is None or expect.lower() == "none":
        return UNSET if expect is None else None
    _known_version(root, use_case, expect, "--expect version")  # a typo, not a lost swap: 2
    return expect


def _print_report(report: Any) -> None:
    if report is not None:
        for line in report.lines():
            typer.echo(line)


@contextmanager
def _errors():
    """Map library errors to exit codes: bad input 2, conflicts and failures 1."""
    from feinschliff.registry import AliasConflict, InvalidName, RegistryError
    from feinschliff.serving.deploy import DeployError
    from feinschliff.serving.preflight import PreflightError
    from feinschliff.serving.vllm_client import VllmError

    try:
        yield
    except (InvalidName, PreflightError) as exc:
        raise Failure(str(exc), code=2) from exc
    except AliasConflict as exc:
        raise Failure(f"conflict: {exc}", code=1) from exc
    except (RegistryError, DeployError, VllmError) as exc:
        raise Failure(str(exc), code=1) from exc
    except Exception as exc:
        if not _is_store_failure(exc):
            raise
        raise Failure(f"registry store failed: {exc}", code=1) from exc


def _is_store_failure(exc: Exception) -> bool:
    """I/O errors of the registry's store: OSError, or a cloud SDK's own (s3fs passes botocore's
    EndpointConnectionError through, which is no OSError)."""
    package = type(exc).__module__.split(".")[0]
    return isinstance(exc, OSError) or package in {"botocore", "aiobotocore", "google", "azure"}
