"""Stage commands: register and run (validate and schema: validate_cmd.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from feinschliff.cli.app import (
    Failure,
    RecipeArg,
    SetOpt,
    _complete_dir,
    _load,
    _read_report,
    app,
    human_answer,
    os_error_line,
)

if TYPE_CHECKING:
    from feinschliff.artifacts import AdapterRef
    from feinschliff.recipe import Recipe


@app.command()
def register(
    recipe: RecipeArg,
    adapter: Annotated[
        Path,
        typer.Option(help="A finished `train` output directory (holding adapter/, metrics.json)."),
    ],
    report: Annotated[
        Path | None,
        typer.Option(
            help="The report.json `evaluate` wrote for this adapter and use case (else exit 2): "
            "the recipe's gate is applied to it and its decision recorded in the new "
            "version's manifest (with --promote also in the audit log)."
        ),
    ] = None,
    promote_: Annotated[
        bool,
        typer.Option(
            "--promote",
            help="Also move the production alias: with --report only if the gate passes "
            "(exit 3 if not); without --report no gate is applied.",
        ),
    ] = False,
    approve: Annotated[
        bool | None,
        typer.Option(
            "--approve/--reject",
            help="Answer the gate's `require_approval` rule as a human (as `gate` does). "
            "Needs --report and a gate with that rule (else exit 2).",
        ),
    ] = None,
    by: Annotated[
        str | None,
        typer.Option(
            help="Who approves or rejects, recorded with the gate decision (default: cli). "
            "Only with --approve/--reject."
        ),
    ] = None,
    comment: Annotated[
        str,
        typer.Option(
            help="The reason for the approval or rejection, recorded with the gate decision. "
            "Only with --approve/--reject."
        ),
    ] = "",
    set_: SetOpt = None,
) -> None:
    """Preflight an adapter (vLLM's adapter_config rules, base model name and tensor shapes,
    safetensors only; exit 2 and nothing written if refused), copy it into the registry as a new
    immutable version with a lineage manifest and point the `candidate` alias at it
    (`--promote`: also `production`, live on register.vllm servers). The registry is the
    recipe's register.registry (default $FEINSCHLIFF_HOME/registry). Prints USE_CASE/VERSION;
    an adapter already registered (same content) adds no version. Exit 3: --promote refused
    by the gate (or awaiting --approve); exit 1: a conflict (production moved meanwhile)."""
    from feinschliff.artifacts import AdapterRef, hash_tree
    from feinschliff.gate import decide_promotion
    from feinschliff.pipeline import registered_lineage, registry_root
    from feinschliff.registry import (
        UNSET,
        AliasConflict,
        InvalidName,
        RegistryError,
        read_aliases,
        set_alias,
        versions,
    )
    from feinschliff.serving.deploy import DeployError
    from feinschliff.serving.preflight import PreflightError
    from feinschliff.serving.publish import publish_version, register_version

    cfg = _load(recipe, set_)
    if approve is not None and report is None:
        raise Failure("--approve/--reject answer the gate: give --report too", code=2)
    approval = human_answer(cfg.gate, approve, by, comment)
    ref = AdapterRef(path=str(adapter.resolve()), sha256=_complete_dir(adapter, "train"))
    if promote_ and report is None:  # allowed (an operator's decision), but never unnoticed
        typer.echo(
            "warning: --promote without --report applies no gate: promoting by hand, as "
            "`registry promote` does",
            err=True,
        )
    metrics = json.loads((adapter / "metrics.json").read_text(encoding="utf-8"))
    lineage = registered_lineage(cfg, metrics)
    decision = None
    if report is not None:
        evaluated = _read_report(report, cfg.use_case)
        _check_report_is_about(evaluated, report, ref)
        decision = decide_promotion(evaluated, cfg.gate, approval)
        lineage = registered_lineage(cfg, metrics, evaluated)
        lineage["gate"] = decision.model_dump()
        if promote_ and not decision.promote:
            waiting = (
                " (it awaits a human: add --approve --by NAME)" if decision.needs_approval else ""
            )
            raise Failure(f"the gate rejects this adapter; refusing --promote{waiting}", code=3)
    try:
        root = registry_root(cfg)
        expected: Any = UNSET
        adapter_sha = None  # hashed once, for the baseline check and the registry's dedup
        if promote_ and report is not None:  # the decision holds only against its baseline
            adapter_sha = hash_tree(ref.dir / "adapter")
            expected = _report_baseline(evaluated, report, root, cfg, adapter_sha)
        known = versions(root, cfg.use_case)
        # preflight first: rejects write nothing
        version = register_version(cfg, ref, lineage, adapter_sha256=adapter_sha)
        if version in known:  # registration is idempotent by adapter content
            typer.echo(
                f"{cfg.use_case}: this adapter is already registered as {version} "
                "(same content; no new version, its manifest stays as it was"
                + ("; the gate decision goes to the audit log)" if decision else ")"),
                err=True,
            )
            if promote_ and read_aliases(root, cfg.use_case).get("production") == version:
                typer.echo(
                    f"{cfg.use_case}: {version} is production already"
                    + (" (the gate decision is recorded in the audit log)" if decision else ""),
                    err=True,
                )
        # a known version's manifest stays: its new gate decision (a human's answer among it)
        # goes to the audit log, as --promote records it
        again = decision.model_dump() if decision and version in known and not promote_ else None
        set_alias(
            root, cfg.use_case, "candidate", version, why="registered via CLI", decision=again
        )
        if promote_:
            report_ = publish_version(
                cfg,
                version,
                why="promoted via CLI",
                decision=decision.model_dump() if decision else None,
                expected=expected,  # compare-and-swap: a production moved meanwhile conflicts
            )
            for line in report_.lines() if report_ else []:
                typer.echo(line, err=True)
    except (InvalidName, PreflightError) as exc:
        raise Failure(str(exc), code=2) from exc
    except AliasConflict as exc:
        raise Failure(f"conflict: {exc}") from exc
    except (RegistryError, DeployError) as exc:
        raise Failure(str(exc)) from exc
    typer.echo(f"{cfg.use_case}/{version}")


def _report_baseline(
    evaluated: dict, report: Path, root: Any, cfg: Recipe, adapter_sha256: str
) -> str | None:
    """The production version the report's gate decision was made against, which must still be
    production (returned, for the compare-and-swap). Reports record the production adapter's
    hash (a registry version's marker hash), not its version. An adapter that already is
    production passes whatever the report compared with: nothing moves, the decision is only
    recorded. A report that left production out because it was trained on another base model
    holds while evaluate would leave the current production out too."""
    from feinschliff.registry import manifest, read_aliases, version_hash, versions

    use_case = cfg.use_case
    current = read_aliases(root, use_case).get("production")
    prod = (evaluated.get("models") or {}).get("production")
    compared = prod.get("adapter_sha256") if isinstance(prod, dict) else None
    if prod is None and current is None:
        return None
    if current is not None and (
        (compared is not None and compared == version_hash(root, use_case, current))
        # the registry's dedup key: the same adapter registers as the current production
        or manifest(root, use_case, current).get("adapter_sha256") == adapter_sha256
        or (prod is None and _left_out_by_evaluate(evaluated, root, cfg, current))
    ):
        return current
    if prod is None:
        was = "no production (only with the base model)"
    else:
        named = [v for v in versions(root, use_case) if version_hash(root, use_case, v) == compared]
        was = f"production {named[0]}" if named else f"production sha256 {str(compared)[:12]}"
    is_now = f"production is now {current}" if current else "there is no production now"
    raise Failure(
        f"--report {report} compared the candidate with {was}, but {is_now}: its gate decision "
        "does not hold any more; re-run `evaluate` and give its report",
        code=2,
    )


def _left_out_by_evaluate(evaluated: dict, root: Any, cfg: Recipe, version: str) -> bool:
    """Whether the report skipped production and evaluate would skip ``version`` now: it was
    trained on another base model than the recipe's. Such a report compared with base alone,
    as a re-run would: refusing it (advice: re-run `evaluate`) made a promotion after a base
    model change impossible from the CLI."""
    from feinschliff.evaluate.stage import other_base_model
    from feinschliff.registry import version_adapter

    if "production" not in (evaluated.get("skipped") or {}):
        return False
    return other_base_model(cfg, version_adapter(root, cfg.use_case, version)) is not None


def _check_report_is_about(evaluated: dict, report: Path, adapter: AdapterRef) -> None:
    """Refuse a report whose candidate is another adapter: its gate decision would be recorded
    for (and with --promote put into production) an adapter it never evaluated. A report
    without the hash (written before evaluate recorded it) is refused too, not trusted with a
    warning: nothing else ties it to this adapter, and a warning is lost in automation."""
    candidate = (evaluated.get("models") or {}).get("candidate") or {}
    recorded = candidate.get("adapter_sha256") if isinstance(candidate, dict) else None
    if recorded is None:
        raise Failure(
            f"--report {report}: it does not record which adapter it evaluated (written by an "
            "older evaluate): re-run `evaluate` on this adapter",
            code=2,
        )
    if recorded != adapter.sha256:
        where = candidate.get("adapter") or "another adapter"
        raise Failure(
            f"--report {report} evaluated another adapter ({where}, sha256 {str(recorded)[:12]}), "
            f"not {adapter.path} (sha256 {adapter.sha256[:12]}): give that adapter's report",
            code=2,
        )


@app.command()
def run(
    recipe: RecipeArg,
    set_: SetOpt = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Run directory for the stage outputs (ingest/, generate/, mixed/, train/, "
            "evaluate/) and the run's ledger (default $FEINSCHLIFF_HOME/runs/USE_CASE)."
        ),
    ] = None,
) -> None:
    """Run the whole loop as the Prefect flow `retrain`: ingest, (generate + mix when the
    recipe has a generate section), train, evaluate, gate and, if the gate passes, register +
    promote into the recipe's registry. Finished stages with unchanged inputs are reused. Prints
    a summary (metrics base vs adapter, each gate rule, decision, version).
    Exit 0 promoted (or unchanged: the trained adapter is production already), 3 rejected, 2 a refused recipe or input (checked before Prefect starts
    where possible), 1 a failed stage (one line naming it) or a workdir another run holds,
    130 Ctrl-C (the same command then resumes: finished stages and training checkpoints are
    reused)."""
    cfg = _load(recipe, set_)  # fail fast with exit 2 before Prefect starts
    from feinschliff.estimate import EstimateError, check_training_fits
    from feinschliff.generate.seeds import SeedError, read_seeds
    from feinschliff.paths import project_root
    from feinschliff.pipeline import default_workdir
    from feinschliff.train.checks import RecipeRefused, refuse_missing_base_model

    try:
        check_training_fits(cfg)  # a training that cannot fit the configured GPU: refuse now
        refuse_missing_base_model(cfg)  # `run` trains here: a mistyped folder before the ingest
        if cfg.generate is not None:  # unreadable seeds: before the ingest, not after it
            read_seeds(cfg.generate.seeds, scrubbed=False)
    except (EstimateError, RecipeRefused, SeedError) as exc:
        raise Failure(str(exc), code=2) from exc

    _check_workdir_free(workdir or default_workdir(cfg))
    sys.path.insert(0, str(project_root()))
    from feinschliff.cli.prefect_server import detached_temporary_server
    from flows.retrain import retrain

    try:
        with detached_temporary_server():  # Ctrl-C and SIGKILL: see prefect_server.py
            result = retrain(
                recipe_path=str(recipe.resolve()),
                overrides=set_ or [],
                workdir=str(workdir) if workdir else None,
            )
    except Exception as exc:
        if (failure := _run_failure(exc)) is None:
            raise  # not a known failure: a bug, with its traceback
        raise failure from exc
    if result.get("unchanged"):  # the adapter is production already: nothing was decided
        typer.echo("\n" + result["summary"])
        raise typer.Exit(0)
    from feinschliff.gate import Decision
    from feinschliff.pipeline import read_report, summary_text

    decision = Decision.model_validate(result["decision"])
    typer.echo(
        "\n" + summary_text(read_report(Path(result["report"])), decision, result["version"])
    )
    raise typer.Exit(0 if result["promoted"] else 3)


def _check_workdir_free(work: Path) -> None:
    """A workdir another run holds: one line before Prefect starts (10-30 s), instead of a
    failed flow run, its traceback and a "run failed" notification. The flow takes the lock
    itself; this only answers the common case early."""
    from feinschliff.pipeline import RunInProgress, run_lock

    try:
        with run_lock(work):
            pass
    except RunInProgress as exc:
        raise Failure(str(exc)) from exc
    except OSError as exc:  # a file, or a folder that cannot be created
        raise Failure(f"workdir {work}: {exc.strerror or exc}", code=2) from exc


def _run_failure(exc: Exception) -> Failure | None:
    """What `run` says when the flow raised: refused inputs exit 2 as the stage's own command
    does, a stage's failure (an OSError among them) is one line naming that stage, exit 1;
    None for anything else."""
    from feinschliff.estimate import EstimateError
    from feinschliff.evaluate.harness import EvalError
    from feinschliff.evaluate.judge import JudgeError
    from feinschliff.generate.seeds import SeedError
    from feinschliff.generate.stage import GenerateError, InputRefused
    from feinschliff.ingest.stage import IngestError, InvalidSource, MissingSecret
    from feinschliff.pipeline import RunInProgress
    from feinschliff.registry import AliasConflict, InvalidName, RegistryError
    from feinschliff.serving.deploy import DeployError
    from feinschliff.serving.preflight import PreflightError
    from feinschliff.train.checks import RecipeRefused, TrainError

    # each error type is raised by one stage only (registry errors are not: a warm start reads
    # the registry too, so they name none)
    stages = [
        ((InvalidSource, MissingSecret), "ingest", 2),
        ((IngestError,), "ingest", 1),
        ((InputRefused, SeedError), "generate", 2),
        ((GenerateError,), "generate", 1),
        ((RecipeRefused, EstimateError), "train", 2),
        ((TrainError,), "train", 1),
        ((EvalError, JudgeError), "evaluate", 1),
        ((PreflightError, InvalidName), "register", 2),
    ]
    for types, stage, code in stages:
        if isinstance(exc, types):
            return Failure(f"{stage}: {exc}", code=code)
    if isinstance(exc, AliasConflict):
        return Failure(f"conflict: {exc}")
    if isinstance(exc, OSError):  # a full or read-only disk; the stage: flows/tasks.py _stage
        return Failure(f"{getattr(exc, 'feinschliff_stage', 'run')}: {os_error_line(exc)}")
    if isinstance(exc, RunInProgress | RegistryError | DeployError):
        return Failure(str(exc))
    return None
