"""Prefect task wrappers: policy (retries, timeouts, caching) in the decorator, one library call
in the body. Business logic lives in ``feinschliff``; nothing here that a CLI user would miss.

Caching: each stage's cache key is the content hash of what it depends on (its recipe sections,
the hashes of its input refs, the feinschliff version). Results are persisted (configure the
location with ``PREFECT_RESULTS_LOCAL_STORAGE_PATH`` or a result-storage block), so an unchanged
rerun skips every finished stage and a changed section reruns that stage and what follows.
A cached ref whose directory was deleted or changed is recomputed (see ``fresh``).
"""

from __future__ import annotations

import calendar
import errno
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from feinschliff.artifacts import (
    AdapterRef,
    DatasetRef,
    OutputInUse,
    ReportRef,
    code_version,
    completed_hash,
    input_key,
    rows_sha256,
)
from feinschliff.evaluate import run_evaluate
from feinschliff.evaluate.harness import EvalError
from feinschliff.evaluate.judge import JudgeError
from feinschliff.evaluate.stage import cache_key as evaluate_cache_key
from feinschliff.evaluate.stage import same_adapter
from feinschliff.gate import Approval, Decision, decide_promotion, write_decision
from feinschliff.generate import merge_datasets, run_generate
from feinschliff.generate.stage import recipe_cache_key as generate_cache_key
from feinschliff.generate.stage import stopped_by_budget
from feinschliff.ingest import run_ingest
from feinschliff.ledger import Ledger, effect_key
from feinschliff.pipeline import (
    ingest_fingerprint,
    lineage,
    read_report,
    registry_root,
)
from feinschliff.recipe import Recipe, evaluated_sets
from feinschliff.recipe_loader import section_hash
from feinschliff.registry import (
    AUDIT_TIME,
    RegistryError,
    audit_log,
    read_aliases,
    version_adapter,
)
from feinschliff.serving.deploy import reconcile
from feinschliff.serving.preflight import PreflightError
from feinschliff.serving.publish import publish_version, register_version
from feinschliff.train import run_train
from feinschliff.train.stage import cache_key as train_cache_key
from flows.faults import fault_point

CACHE = {"persist_result": True, "cache_expiration": timedelta(days=30)}


def _ingest_key(ctx: Any, p: dict[str, Any]) -> str | None:
    r: Recipe = p["recipe"]
    try:
        fingerprint = ingest_fingerprint(r)
    except FileNotFoundError:
        return None  # a missing eval set: the task itself fails with the message
    return input_key(
        "ingest", section_hash(r, "feedback"), fingerprint, str(p["out"]), code_version()
    )


def _train_key(ctx: Any, p: dict[str, Any]) -> str:
    r: Recipe = p["recipe"]
    return input_key("train", train_cache_key(r, p["data"], p["production"]), str(p["out"]))


def _evaluate_key(ctx: Any, p: dict[str, Any]) -> str:
    r: Recipe = p["recipe"]
    prod = _production(r, p["adapter"], p["production"])
    key = evaluate_cache_key(r, p["adapter"], prod, p["data"])
    return input_key("evaluate", key, str(p["out"]))


def _production(recipe: Recipe, candidate: AdapterRef, version: str | None) -> AdapterRef | None:
    """The production adapter to compare with (``version``, as the run recorded it); None when
    there is none or it *is* the candidate."""
    if version is None:
        return None
    prod = version_adapter(registry_root(recipe), recipe.use_case, version)
    return None if same_adapter(prod, candidate) else prod


def _retry_ingest_after_outages(task: Task, task_run: Any, state: Any) -> bool:
    """Retry ingest when a live pull failed (its server may be back) or on an unexpected
    error. An unreadable export, a missing key or credentials, too much quarantined, an
    occupied --out or a full or read-only disk fail the same way again after reading every record anew (minutes at a
    million records), and the failure notice waits for all three attempts."""
    from feinschliff.ingest.pull import PullFailed
    from feinschliff.ingest.stage import IngestError

    exc = _raised(state)
    if isinstance(exc, IngestError):
        return isinstance(exc.__cause__, PullFailed)
    return not isinstance(exc, OutputInUse) and not _lasting_os_error(exc)


# A full disk or quota, a read-only disk, a permission: still so 5 and 30 s later.
LASTING_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def _lasting_os_error(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno in LASTING_ERRNOS


@contextmanager
def _stage(name: str) -> Iterator[None]:
    """An OSError (a full disk, a read-only one, an unreadable file) leaves the task tagged
    with its stage: `run` names the stage in its one line, as it does for the library's own
    errors (each of those belongs to one stage)."""
    try:
        yield
    except OSError as exc:
        exc.feinschliff_stage = name  # type: ignore[attr-defined]
        raise


def _raised(state: Any) -> BaseException | None:
    """The exception a failed task state holds (None: none); the retry conditions' input."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - each condition sorts them
        return exc
    return None


@task(
    name="ingest",
    cache_key_fn=_ingest_key,
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=_retry_ingest_after_outages,
    **CACHE,
)
def ingest_task(recipe: Recipe, out: Path) -> DatasetRef:
    with _stage("ingest"):
        return run_ingest(recipe.feedback, out, eval_tasks=evaluated_sets(recipe))


class _TrainProgress(logging.Handler):
    """Mirror the trainer's `step i/n` log lines into a Prefect progress artifact (the library
    logs progress and knows nothing of Prefect)."""

    def __init__(self, artifact_id: Any):
        super().__init__(level=logging.INFO)
        self.artifact_id = artifact_id

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        # exactly the trainer's `step %d/%d ...`: `step %d eval loss %.4f` has two numbers too
        if str(record.msg).startswith("step %d/%d") and len(args) >= 2 and args[1]:
            update_progress_artifact(self.artifact_id, min(100.0, 100.0 * args[0] / args[1]))


def _generate_key(ctx: Any, p: dict[str, Any]) -> str | None:
    r: Recipe = p["recipe"]
    if stopped_by_budget(Path(p["out"])):
        return None  # not cached: the rerun continues the output (the library reuses the rest)
    # the library's key: the section, seed files, eval sets, template version, feedback
    try:
        key = generate_cache_key(r, p["feedback"]) if r.generate else None
    except FileNotFoundError:
        return None  # a missing eval set: the task itself fails with the message
    return input_key("generate", key, str(p["out"]), code_version())


def _mix_key(ctx: Any, p: dict[str, Any]) -> str:
    r: Recipe = p["recipe"]
    return input_key(
        "mix",
        section_hash(r, "generate"),
        rows_sha256(p["feedback"]),
        p["generated"].sha256,
        str(p["out"]),
        code_version(),
    )


@task(name="generate", cache_key_fn=_generate_key, timeout_seconds=12 * 3600, **CACHE)
def generate_task(recipe: Recipe, feedback: DatasetRef, out: Path) -> DatasetRef:
    # distilabel runs in a child process (it installs signal handlers: not in a task thread);
    # completed teacher requests are cached, so a rerun after an outage repeats none.
    with _stage("generate"):
        return run_generate(recipe, out, feedback=feedback)


@task(name="mix", cache_key_fn=_mix_key, **CACHE)
def mix_task(recipe: Recipe, feedback: DatasetRef, generated: DatasetRef, out: Path) -> DatasetRef:
    assert recipe.generate is not None
    with _stage("mix"):
        return merge_datasets(feedback, generated, recipe.generate.mix, out)


@task(name="train", cache_key_fn=_train_key, timeout_seconds=24 * 3600, **CACHE)
def train_task(recipe: Recipe, data: DatasetRef, out: Path, production: str | None) -> AdapterRef:
    """``production``: the production version when the run started (what a warm start
    continues), recorded in the run's ledger."""
    # No blind retries: a rerun resumes from the last complete checkpoint instead.
    artifact = create_progress_artifact(0.0, description=f"Training {recipe.use_case}")
    handler = _TrainProgress(artifact)
    logging.getLogger("feinschliff.train").addHandler(handler)
    try:
        with _stage("train"):
            ref = run_train(recipe, data, out, production=production)
    finally:
        logging.getLogger("feinschliff.train").removeHandler(handler)
    update_progress_artifact(artifact, 100.0)
    return ref


def _retry_unless_deterministic(task: Task, task_run: Any, state: Any) -> bool:
    """Retry evaluate after transient errors only. A task lm-eval does not know, a dataset
    missing offline, an occupied --out or a judge that refused (or stayed down through its own
    retries with backoff) fail the same way again, after every model has been evaluated anew:
    hours of GPU time before the same message (so does a full or read-only disk)."""
    exc = _raised(state)
    return not isinstance(exc, EvalError | JudgeError | OutputInUse) and not _lasting_os_error(exc)


@task(
    name="evaluate",
    cache_key_fn=_evaluate_key,
    timeout_seconds=6 * 3600,
    retries=1,
    retry_condition_fn=_retry_unless_deterministic,
    **CACHE,
)
def evaluate_task(
    recipe: Recipe, data: DatasetRef, adapter: AdapterRef, out: Path, production: str | None
) -> ReportRef:
    """``production``: the version to compare with, as the run recorded it before evaluating."""
    prod = _production(recipe, adapter, production)
    with _stage("evaluate"):
        return run_evaluate(recipe, adapter, out, production=prod, data=data)


@task(name="gate", cache_policy=NO_CACHE)
def gate_task(recipe: Recipe, report: ReportRef, approval: Approval | None = None) -> Decision:
    with _stage("gate"):
        decision = decide_promotion(read_report(report), recipe.gate, approval)
        write_decision(report.dir, decision)
    return decision


def _retry_unless_refused(task: Task, task_run: Any, state: Any) -> bool:
    """Retry transient errors only: a refused adapter or a lost compare-and-swap stays refused,
    a full or read-only registry disk stays so."""
    exc = _raised(state)
    return not isinstance(exc, RegistryError | PreflightError) and not _lasting_os_error(exc)


@task(
    name="register",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=_retry_unless_refused,
)
def register_task(
    recipe: Recipe,
    data: DatasetRef,
    adapter: AdapterRef,
    report: ReportRef,
    decision: Decision,
    expected_production: str | None,
    ledger_path: Path,
    run: str,
) -> str:
    """Register the adapter and make it production, each side effect once per run (ledger).

    ``expected_production`` is the production version the evaluation compared against: a task
    input, so a Prefect retry compare-and-swaps against it too, and a production that another
    promotion moved meanwhile fails with AliasConflict instead of being overridden.
    """
    with _stage("register"):
        # Preflight (adapter config, base model name + shapes) runs before anything is written;
        # with register.vllm the version goes live on every replica before production moves.
        ledger = Ledger(ledger_path)
        version = ledger.perform(
            effect_key(run, "register", recipe.use_case, adapter.sha256),
            lambda: register_version(
                recipe, adapter, lineage(recipe, data, adapter, report, decision)
            ),
            what=f"register {recipe.use_case}",
            run=run,
            effect="register",
        )
        fault_point("register:after-version")
        # Keyed by the version only: a rerun after a kill mid-promotion sees production already at
        # `version` (another expected_production) and must land in `recover`, not promote anew.
        promote_key = effect_key(run, "promote", recipe.use_case, version)
        ledger.perform(
            promote_key,
            lambda: _promote(recipe, version, expected_production, decision),
            what=f"promote {recipe.use_case} {expected_production} -> {version}",
            recover=lambda: _already_promoted(recipe, version, ledger.intent_at(promote_key)),
        )
        fault_point("register:after-promote")
    return version


def _promote(recipe: Recipe, version: str, expected: str | None, decision: Decision) -> str:
    publish_version(
        recipe,
        version,
        why="gate passed",
        decision=decision.model_dump(),
        expected=expected,
        on_promoted=lambda: fault_point("register:after-alias-before-vllm"),
    )
    return version


def _already_promoted(recipe: Recipe, version: str, since: float | None) -> str | None:
    """After a crash mid-promotion (intent recorded at ``since``): ``version`` when the
    promotion already happened, so it counts as done; None when it did not (promote now).

    - production is ``version``: only let the servers converge (reconcile loads nothing that
      is loaded already).
    - production moved to ``version`` after ``since`` and away again since (an operator's
      rollback, another promotion): the promotion happened, and doing it again would undo
      that later move. The flow says so when it ends (production is not ``version``).
    """
    root = registry_root(recipe)
    if read_aliases(root, recipe.use_case).get("production") == version:
        if recipe.register.vllm is not None:
            reconcile(root, recipe.use_case, recipe.register.vllm)
        return version
    if since is not None and _promoted_since(root, recipe.use_case, version, since):
        return version
    return None


def _promoted_since(root: Any, use_case: str, version: str, since: float) -> bool:
    """Whether the audit log shows production moved to ``version`` at or after ``since``."""
    floor = int(since)  # the audit log's times are whole UTC seconds
    for entry in audit_log(root, use_case):
        if entry.get("event") != "alias" or entry.get("alias") != "production":
            continue
        if entry.get("new") != version:
            continue
        try:
            at = calendar.timegm(time.strptime(entry.get("at", ""), AUDIT_TIME))
        except (TypeError, ValueError):
            continue
        if at >= floor:
            return True
    return False


def production_version(recipe: Recipe) -> str | None:
    """The registry's production version now (the baseline an evaluation compares against)."""
    return read_aliases(registry_root(recipe), recipe.use_case).get("production")


def fresh(stage: Task, **kwargs: Any) -> Any:
    """Run a cached stage; if the cached ref's directory is gone or changed, recompute it."""
    ref = stage(**kwargs)
    if completed_hash(Path(ref.path)) != ref.sha256:
        ref = stage.with_options(refresh_cache=True)(**kwargs)
    return ref
