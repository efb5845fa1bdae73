"""Glue shared by the CLI and the Prefect flow: stage directories, lineage, the run summary.

This is not an orchestrator (that is Prefect's job, in ``flows/``); it holds the small pieces
both entry points need so that ``feinschliff <stage>`` and the flow produce identical outputs.
"""

from __future__ import annotations

import fcntl
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from feinschliff.artifacts import (
    AdapterRef,
    DatasetRef,
    ReportRef,
    hash_tree,
    input_key,
    rows_sha256,
    sha256_file,
)
from feinschliff.gate import Decision, metric_value
from feinschliff.lock_holder import holder_line, this_process
from feinschliff.models import feinschliff_home
from feinschliff.recipe import FeedbackSpec, Recipe, evaluated_sets
from feinschliff.recipe_loader import dump_resolved, recipe_hash
from feinschliff.registry import open_root
from feinschliff.specs.evaluate import USECASE_TASK

EXIT_PROMOTED = 0
EXIT_REJECTED = 3


def default_workdir(recipe: Recipe) -> Path:
    return feinschliff_home() / "runs" / recipe.use_case


class RunInProgress(RuntimeError):
    """Another run holds the work directory."""


@contextmanager
def run_lock(workdir: Path, name: str = ".run.lock") -> Iterator[None]:
    """Hold ``workdir`` for one run: runs of a use case share its stage directories, ledger
    and checkpoints, and a second run would wipe outputs the first is using. A second run fails
    at once naming the holder (deployed retrain runs queue on a concurrency limit first). The
    lock is an ``flock``: it dies with its process, so a rerun after a kill is not blocked."""
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / name).open("a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RunInProgress(
                f"{workdir} is in use by a run ({holder}): wait for it to finish, or pass "
                "another workdir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(holder_line() + "\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def held_here(lock: Path) -> bool:
    """Whether this process holds ``lock`` (``run_lock`` writes its holder into it)."""
    try:
        return lock.read_text(encoding="utf-8").startswith(this_process() + " ")
    except OSError:
        return False


def registry_root(recipe: Recipe) -> Path:
    return open_root(recipe.register.registry)  # a path or file:// URL; None: the default


def held_back(recipe: Recipe, adapter_sha: str, own: list[str]) -> tuple[str, str] | None:
    """(version, why) when the trained adapter is a registered version that no run may promote
    on its own: one retired, or one an operator took out of production (a rollback) that has
    not been promoted again since. Training from the same feedback gives the same adapter, so
    without this every scheduled run re-promoted it over the rollback (or failed promoting a
    retired one). ``own``: versions this run registered itself (a rerun finishing them)."""
    from feinschliff.registry_read import moved_off_by_hand, registered_as, retired

    root, use_case = registry_root(recipe), recipe.use_case
    version = registered_as(root, use_case, adapter_sha)
    if version is None or version in own:
        return None
    if gone := retired(root, use_case).get(version):
        why = f"which was retired (by {gone.get('by')} at {gone.get('at')}: {gone.get('why')})"
        return version, why + "; it is never promoted again: new feedback trains a new adapter"
    if move := moved_off_by_hand(root, use_case, version):
        how = "rolled back from" if _older(move.get("new"), version) else "replaced by hand"
        return version, (
            f"which production was {how} (to {move.get('new') or 'nothing'} by {move.get('by')} "
            f"at {move.get('at')}: {move.get('why')}); promote it by hand "
            "(feinschliff registry promote) or retire it"
        )
    return None


def _older(version: str | None, than: str) -> bool:
    return version is not None and int(version[1:]) < int(than[1:])


def feedback_fingerprint(spec: FeedbackSpec) -> list[str]:
    """Content hashes of every feedback source (files and directory trees), in recipe order.

    A live-pull source has no content to hash before the pull runs; it gets a fresh random
    token, so a stage that pulls is never served from a cache.
    """
    out = []
    for src in spec.sources:
        if src.path is None:
            out.append(f"pull:{uuid.uuid4()}")
            continue
        path = Path(src.path)
        if path.is_dir():
            out.append(hash_tree(path, exclude=()))
        elif path.exists():
            out.append(sha256_file(path))
        else:
            out.append(f"missing:{path}")
    return out


def ingest_fingerprint(recipe: Recipe) -> dict[str, Any]:
    """What ingest's output depends on besides the ``feedback`` section: the sources' content,
    the eval sets rows are decontaminated against (the recipe's ``evaluate.tasks`` included,
    names and file contents) and which pseudonymization key encrypts them."""
    from feinschliff.ingest.decontam import find_eval_sets
    from feinschliff.pii import PiiError, key_fingerprint, load_key

    spec = recipe.feedback
    names = [*evaluated_sets(recipe), *spec.decontamination.eval_sets]
    names = [n for n in names if n != USECASE_TASK]  # ingest's own held-out split, no eval set
    sets = find_eval_sets(names if spec.decontamination.enabled else [])
    key = None
    if spec.pii.mode == "pseudonymize":
        try:
            key = key_fingerprint(load_key(spec.pii.key_secret))
        except PiiError:
            key = "missing"  # the stage itself fails with the message
    return {
        "sources": feedback_fingerprint(spec),
        "eval_sets": {name: sha256_file(path) for name, path in sets.files.items()},
        "unchecked": sets.unchecked,
        "pii_key": key,
    }


def eval_data_fingerprint() -> str:
    """The bundled eval data (lm-eval tasks, judge questions and prompts) that ``evaluate``
    reads from the checkout: an edited task file must not reuse an old report."""
    from feinschliff.paths import project_root

    root = project_root() / "evals"
    return input_key(*(hash_tree(root / d, exclude=()) for d in ("lm_eval_tasks", "judge")))


def read_report(report: ReportRef | Path) -> dict[str, Any]:
    path = report.dir / "report.json" if isinstance(report, ReportRef) else Path(report)
    return json.loads(path.read_text(encoding="utf-8"))


def lineage(
    recipe: Recipe, data: DatasetRef, adapter: AdapterRef, report: ReportRef, decision: Decision
) -> dict[str, Any]:
    """What the registry records about where a version came from and why it was accepted."""
    metrics = json.loads((adapter.dir / "metrics.json").read_text(encoding="utf-8"))
    return {
        "recipe_sha256": recipe_hash(recipe),
        "recipe_resolved": dump_resolved(recipe),
        "base_model": base_model_lineage(recipe, metrics),
        "dataset": dataset_lineage(data),
        "train": {
            k: metrics.get(k)
            for k in (
                "method",
                "backend",
                "global_step",
                "trained_tokens",
                "wall_seconds",
                "peak_rss_mb",
                "trainable_parameters",
                # what production was trained on: a warm start on the same rows and training
                # recipe has nothing new to learn (``train.stage.nothing_new``)
                "dataset_rows_sha256",
                "train_inputs_sha256",
                # what it learned from (``registry history``): rows after the eval split, how
                # many were new and replayed, the version a warm start continued
                "train_rows",
                "new_rows",
                "replayed_rows",
                "init_from",
                "resumed_from",
            )
        }
        | {"final_loss": metrics["loss_curve"][-1]["loss"] if metrics["loss_curve"] else None},
        "evaluation": _evaluation_lineage(report),
        "gate": decision.model_dump(),
    }


def _evaluation_lineage(report: ReportRef) -> dict[str, Any]:
    """The report's metrics and which models they compare: the production version the candidate
    was evaluated against, so ``registry history`` need not infer it from the audit log."""
    body = read_report(report)
    return {
        "report_sha256": report.sha256,
        "metrics": body["metrics"],
        "models": body.get("models"),
    }


def registered_lineage(
    recipe: Recipe, metrics: dict[str, Any], report: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What `feinschliff register` records about a train output it registers (it has no
    dataset ref). The base model above all: warm starts and evaluate's production baseline
    check a version's base model against the recipe's, and skip versions that record none, so
    a CLI-registered production was continued and compared with on a changed base model."""
    lineage: dict[str, Any] = {
        "recipe_sha256": recipe_hash(recipe),
        "recipe_resolved": dump_resolved(recipe),
        "base_model": base_model_lineage(recipe, metrics),
        "train": metrics,
    }
    if report is not None:
        lineage["evaluation"] = {"metrics": report.get("metrics")}
    return lineage


def base_model_lineage(recipe: Recipe, metrics: dict[str, Any]) -> dict[str, Any]:
    """The base model an adapter was trained on: as its training recorded it (``metrics.json``),
    the recipe's where the training recorded none."""
    name = metrics.get("base_model") or recipe.base_model.name
    return {
        "name": name,
        "revision": recipe.base_model.revision if name == recipe.base_model.name else None,
        "path": metrics.get("base_model_path"),
    }


def dataset_lineage(data: DatasetRef) -> dict[str, Any]:
    """Hashes, counts and feedback sources of the training data. A mix of feedback and
    synthetic rows (a recipe with `generate`) names its parts; the sources are the feedback's."""
    manifest = json.loads((data.dir / "manifest.json").read_text(encoding="utf-8"))
    lineage: dict[str, Any] = {
        "sha256": data.sha256,
        "rows_sha256": rows_sha256(data),  # the training snapshot's key (train.data)
        "counts": manifest["counts"],
        "outputs": manifest["sha256"],
    }
    if manifest.get("stage") == "mix":
        lineage["mix"] = {
            "feedback": manifest["feedback"],
            "generated": manifest["generated"],
            "weights": manifest["weights"],
        }
        feedback = Path(manifest["feedback"]["path"]) / "manifest.json"
        manifest = json.loads(feedback.read_text(encoding="utf-8"))
    lineage["sources"] = [
        {k: s[k] for k in ("kind", "path", "inputs")} for s in manifest["sources"]
    ]
    return lineage


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, base, candidate, delta) per metric, formatted; a missing value shows as n/a."""
    rows = []
    metrics = report["metrics"]
    for name in sorted(metrics.get("candidate", {})):
        cand = metric_value((metrics["candidate"][name] or {}).get("value"))
        base = metric_value((metrics.get("base", {}).get(name) or {}).get("value"))
        rows.append(
            (
                name,
                "n/a" if base is None else f"{base:.4f}",
                "n/a" if cand is None else f"{cand:.4f}",
                "n/a" if base is None or cand is None else f"{cand - base:+.4f}",
            )
        )
    return rows


def summary_text(report: dict[str, Any], decision: Decision, version: str | None) -> str:
    lines = [f"{'metric':<32} {'base':>8} {'adapter':>8} {'delta':>8}"]
    lines += [f"{m:<32} {b:>8} {c:>8} {d:>8}" for m, b, c, d in summary_rows(report)]
    lines.append("")
    for r in decision.results:
        lines.append(
            f"gate {r.rule:<14} {r.metric:<28} {'PASS' if r.passed else 'FAIL'}  {r.detail}"
        )
    verdict = "PROMOTED" if decision.promote else "REJECTED"
    lines.append(f"decision: {verdict}" + (f"  registry version: {version}" if version else ""))
    return "\n".join(lines)
