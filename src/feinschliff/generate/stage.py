"""The generate stage: seeds -> (child process) distilabel -> filtered rows in ingest's contract.

Writes into ``out``: ``sft.jsonl``, ``preference.jsonl``, ``manifest.json`` (teacher, judge,
prompt template version, seed fingerprints, PII findings, request/token/cache counts, drops by
reason, sha256 of each output), ``distiset/`` (the saved Distiset, for inspection),
``generate.log`` (the child's log) and the ``.complete`` marker last. A run holds ``out``
(``outlock``): a second run on it fails at once, naming the holder.

Caching, two levels (``keys``):
- output: ``out`` complete and made from the same inputs (seed file hashes, the section minus
  operational knobs, template version, feedback and eval-set fingerprints: the eval sets ingest
  decontaminates against, ``eval_set_names``; a local teacher's folder content) -> reused as
  is; no PII engine, no child process, no teacher call. An output cut short by the budget is
  never reused (the rerun continues from the request cache).
- request: every teacher reply is kept in ``$FEINSCHLIFF_HOME/cache/generate/`` keyed by the
  request body, so a rerun after an outage, a budget stop or a filter change repeats no
  completed request.

Budget: a run the budget stops is complete, marked ``stopped_by_budget``, and continued by the
next run; also one stopped before any question was answered (no rows yet), so a flow goes on
without synthetic rows instead of failing as if the filters had dropped everything.

Not here: mixing with the feedback data (``feinschliff.generate.mix``), held-out splits
(synthetic rows are never evaluation data, and rows holding a held-out prompt of the feedback
are dropped: ``postprocess.HeldoutGuard``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feinschliff.artifacts import (
    DatasetRef,
    mark_complete,
    prepare_out,
    sha256_file,
    write_json,
)
from feinschliff.generate.keys import (  # noqa: F401  (the stage's cache API, used from here)
    OPERATIONAL,
    _eval_fingerprint,
    _find_eval_sets,
    cache_key,
    eval_set_names,
    recipe_cache_key,
    request_cache_path,
    reusable_output,
    stopped_by_budget,
)
from feinschliff.generate.ledger import budget_note, budget_stop, cache_failure  # noqa: F401
from feinschliff.generate.outlock import OutputBusy, hold_output, refuse_overlap
from feinschliff.generate.templates import TEMPLATE_VERSION
from feinschliff.generate.watch import FAILED_MAX_S, FAILED_QUIET_S, _watch_child, disk_full  # noqa: F401
from feinschliff.ngrams import EvalIndex, N
from feinschliff.recipe import Recipe
from feinschliff.specs.generate import GenerateSpec, LocalTeacher, OpenAITeacher

if TYPE_CHECKING:
    from feinschliff.ingest.decontam import EvalSets

log = logging.getLogger(__name__)


class GenerateError(RuntimeError):
    """Bad seeds, a failed teacher or a crashed generation process; the message says which."""


class InputRefused(GenerateError):
    """An input cannot be used as given (a seed file that is not UTF-8, no seeds): fixed in
    the inputs, not by a rerun (exit 2); raised before anything is written."""


def run_generate(recipe: Recipe, out: Path, feedback: DatasetRef | None = None) -> DatasetRef:
    """Generate synthetic rows for ``recipe.generate`` into ``out``; see the module docstring.

    ``feedback``: the ingest output of the same run; generated rows holding one of its held-out
    prompts are always dropped (that split is the ``usecase_heldout`` evaluation), and with
    ``filters.dedup_against_feedback`` so are questions duplicating any of its prompts.

    ``out`` is held for the whole run: a second run on it fails at once naming the holder.
    An ``out`` that is, holds or lies inside ``feedback`` is refused (``OutputInUse``) before
    anything is written.
    """
    if recipe.generate is None:
        raise GenerateError("the recipe has no `generate` section")
    spec = recipe.generate
    # before the lock beside ``out``: inside the feedback, even that voids its .complete
    refuse_overlap("--out", out, {"--feedback": feedback.dir if feedback else None})
    # arguments and seeds first: a refused run creates no folder (the lock's parent neither)
    try:
        key = recipe_cache_key(recipe, feedback)
    except FileNotFoundError as exc:  # a JSONL eval set the recipe names is missing
        raise GenerateError(str(exc)) from exc
    reuse = reusable_output(out, key) is not None
    models = None if reuse else _models(spec)  # a reused output fetches no alias
    seeds = None if reuse else _read_seeds(spec)
    try:
        with hold_output(out, reuse=reuse):
            return _generate(recipe, spec, out, feedback, key, models, seeds)
    except OutputBusy as exc:
        raise GenerateError(str(exc)) from None


def _models(spec: GenerateSpec) -> tuple[str, str]:
    return (
        _model_string(spec.teacher, "generate.teacher"),
        _model_string(_judge(spec), _judge_path(spec)),
    )


def _read_seeds(spec: GenerateSpec) -> Any:
    from feinschliff.generate.seeds import SeedError, read_seeds

    try:  # before prepare_out: a bad seed file leaves no half-made output behind
        return read_seeds(spec.seeds)
    except SeedError as exc:
        raise InputRefused(str(exc)) from exc


def _generate(
    recipe: Recipe,
    spec: GenerateSpec,
    out: Path,
    feedback: DatasetRef | None,
    key: str,
    models: tuple[str, str] | None,
    seeds: Any,
) -> DatasetRef:
    ngram = recipe.feedback.decontamination.ngram  # ingest's n, the gate's too
    names = eval_set_names(recipe)
    digest = reusable_output(out, key)
    if digest is not None:
        log.info("generate: reusing %s (same inputs, complete)", out)
        return DatasetRef(path=str(out), sha256=digest)

    from feinschliff.generate.seeds import plan_requests

    started = time.monotonic()
    teacher, judge = models or _models(spec)  # None: reusable when checked, not once held
    if seeds is None:
        seeds = _read_seeds(spec)
    prepare_out(out, key, "generate")
    plan = plan_requests(seeds.items, spec.num_instructions, spec.instructions_per_seed)
    status = _run_child(spec, out, plan, teacher, judge)

    from feinschliff.generate.postprocess import (
        HeldoutGuard,
        feedback_prompts,
        filter_rows,
        heldout_prompts,
        heldout_turns,
        rows_from_distiset,
    )

    result = rows_from_distiset(_load_leaves(out / "distiset"), spec, teacher, judge)
    prompts = (
        feedback_prompts(feedback.dir)
        if feedback and spec.filters.dedup_against_feedback
        else set()
    )
    heldout = (
        HeldoutGuard(heldout_prompts(feedback.dir), ngram, heldout_turns(feedback.dir))
        if feedback
        else None
    )
    sets = _find_eval_sets(names) if spec.filters.decontaminate else None
    index = _eval_index(ngram, sets) if sets is not None else None
    sft = filter_rows(result.sft, spec, prompts, index, result.drops["sft"], heldout)
    pref = filter_rows(result.preference, spec, prompts, index, result.drops["preference"], heldout)
    _write_jsonl(out / "sft.jsonl", sft)
    _write_jsonl(out / "preference.jsonl", pref if spec.preference else [])

    stopped = budget_stop(status)
    manifest: dict[str, Any] = {
        "stage": "generate",
        "teacher": spec.teacher.model_dump(mode="json"),  # the key's variable name, never the key
        "judge": _judge(spec).model_dump(mode="json") if spec.preference else None,
        "template_version": TEMPLATE_VERSION,
        "seeds": {
            "count": len(seeds.items),
            "repeats_left_out": len(seeds.repeats),
            # seed id -> the earlier seed it repeats (the first 20: a footer may repeat 10,000x)
            "repeats": dict(list(seeds.repeats.items())[:20]),
            "self_instruct_requests": len(plan),
            "inputs": seeds.inputs,
            "pii_mode": spec.seeds.pii,
            "pii_findings": dict(sorted(seeds.pii_findings.items())),
        },
        "teacher_usage": {
            k: status.get(k, 0)
            for k in ("requests", "tokens", "cache_hits", "rejected", "refused", "truncated")
        },
        "stopped_by_budget": stopped,
        "counts": {
            "instructions": result.selected_instructions,
            "sft.jsonl": len(sft),
            "preference.jsonl": len(pref) if spec.preference else 0,
        },
        "drops": {k: dict(sorted(v.items())) for k, v in result.drops.items()},
        "decontamination": {
            "ngram": ngram,
            "eval_sets": {n: sha256_file(p) for n, p in sets.files.items()} if sets else {},
            "unchecked": sets.unchecked if sets else [],  # no local data (upstream tasks)
        },
        "feedback": feedback.sha256 if feedback else None,
        "heldout_prompts_excluded": heldout.count if heldout else 0,
        "seconds": round(time.monotonic() - started, 1),
        "sha256": {n: sha256_file(out / n) for n in ("sft.jsonl", "preference.jsonl")},
    }
    write_json(out / "manifest.json", manifest)
    shutil.rmtree(out / ".work", ignore_errors=True)
    if not sft and not pref:
        _no_rows(out, status, unanswered=not result.sft and not result.preference)
    digest = mark_complete(out, stage="generate", key=key, stopped_by_budget=stopped)
    if stopped:
        log.warning("generate: %s", budget_note(stopped, manifest["counts"], status))
    return DatasetRef(path=str(out), sha256=digest)


def _no_rows(out: Path, status: dict[str, Any], *, unanswered: bool) -> None:
    """No row survived. A run the budget stopped before any question was answered is complete
    but stopped (returns): the budget semantics, a rerun continues from the request cache and
    a flow goes on without synthetic rows, as after any budget stop. Otherwise the run fails
    and is not marked complete, so a rerun tries again (replies are cached)."""
    stopped = budget_stop(status)
    if stopped and unanswered and not status.get("failed"):
        return
    refused = uniform_rejection(status)
    if refused is not None:
        raise GenerateError(refused)
    budget = f" (the run also stopped early: {stopped}; a rerun continues)" if stopped else ""
    raise GenerateError(
        f"no rows survived generation and filtering{budget}; see {out / 'manifest.json'} drops"
    )


def _eval_index(ngram: int = N, sets: EvalSets | None = None) -> EvalIndex:
    """The index of ``sets`` (None: every bundled task), read as ingest reads them (a broken
    line is skipped)."""
    from feinschliff.ingest.decontam import Decontaminator
    from feinschliff.paths import bundled_tasks_dir

    if sets is None:
        sets = _find_eval_sets([p.stem for p in sorted(bundled_tasks_dir().glob("*.jsonl"))])
    return Decontaminator(sets, ngram).index


# --------------------------------------------------------------------------- child process


def _run_child(
    spec: GenerateSpec, out: Path, plan: list[tuple[str, str]], teacher: str, judge_model: str
) -> dict[str, Any]:
    from feinschliff.generate.child import GenerateJob
    from feinschliff.generate.ledger import Ledger

    work = out / ".work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(out / "distiset", ignore_errors=True)
    work.mkdir(parents=True)
    judge = _judge(spec)
    job = GenerateJob(
        spec=spec,
        seeds=plan,
        teacher_model=teacher,
        judge_model=judge_model,
        teacher_cache=str(request_cache_path(spec.teacher)),
        judge_cache=str(request_cache_path(judge)),
        ledger=str(work / "ledger.json"),
        pipeline_cache=str(work / "distilabel"),
        distiset=str(out / "distiset"),
        status=str(work / "status.json"),
    )
    Ledger(Path(job.ledger), None, None).reset()
    (work / "job.json").write_text(job.model_dump_json(indent=2), encoding="utf-8")
    log_path = out / "generate.log"
    log.info(
        "generate: %s self-instruct requests to %s (log: %s)",
        len(plan),
        job.teacher_model,
        log_path,
    )
    with log_path.open("wb") as log_file:
        code, failed = _watch_child(
            [
                sys.executable,
                "-m",
                "feinschliff.generate.child",
                str(work / "job.json"),
                str(os.getpid()),
            ],
            log_file,
            log_path,
            Ledger(Path(job.ledger), None, None),
            # self-instruct, then one request per question for its answers (and its rating)
            planned=len(plan) + spec.num_instructions * (2 if spec.preference else 1),
        )
    if failed is not None:  # the teacher failed and the child was stopped
        raise _teacher_failure(failed, job.teacher_cache)
    status_path = Path(job.status)
    if code != 0 or not status_path.exists():
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        full = disk_full(tail, [out, Path(job.teacher_cache), Path(job.judge_cache)])
        raise full or GenerateError(
            f"the generation process failed (exit {code}); log {log_path}:\n{tail}"
        )
    status = json.loads(status_path.read_text())
    if status["error"]:
        raise GenerateError(f"the generation pipeline failed: {status['error']}; log {log_path}")
    if status["failed"]:
        raise _teacher_failure(status, job.teacher_cache)
    return status


def _teacher_failure(state: dict[str, Any], cache: str) -> Exception:
    return cache_failure(state["failed"]) or GenerateError(
        f"teacher failure: {state['failed']}. {state['requests']} request(s) were sent in "
        f"this run; every completed reply is kept in {cache}, so rerunning the "
        "same command continues without repeating them."
    )


def uniform_rejection(status: dict[str, Any]) -> str | None:
    """The error for a run whose every live request the endpoint refused with the same answer
    (a 400 about the request's shape, e.g. a schema feature or parameter it does not support:
    no row will ever pass); None when there was none, or some requests were answered or refused
    differently (per-row problems, e.g. a prompt too long, are dropped and counted instead)."""
    first, requests = status.get("first_rejection"), status.get("requests", 0)
    if not first or status.get("rejections_differ") or status.get("rejected") != requests:
        return None
    return (
        f"the teacher refused every one of the {requests} request(s) of this run with the same "
        f"error, so the requests themselves do not fit the endpoint: {first}. Check "
        "generate.teacher (model, structured_output: `off` sends no JSON schema) and the "
        "sampling settings against what the endpoint supports."
    )


# A Distiset with one subset names it "default" (distilabel's create_distiset); the column
# that tells which leaf it is, checked in this order.
_LEAF_COLUMNS = (("chosen", "preferences"), ("instructions", "instructions_raw"))


def _load_leaves(path: Path) -> dict[str, list[dict[str, Any]]]:
    from distilabel.distiset import Distiset

    distiset = Distiset.load_from_disk(str(path))
    leaves = {name: list(ds["train"]) for name, ds in distiset.items()}
    if set(leaves) == {"default"}:
        columns = set(distiset["default"]["train"].column_names)
        name = next((leaf for col, leaf in _LEAF_COLUMNS if col in columns), "answers")
        leaves = {name: leaves["default"]}
    return leaves


# --------------------------------------------------------------------------- helpers


def _judge(spec: GenerateSpec) -> OpenAITeacher | LocalTeacher:
    if spec.preference is not None and spec.preference.judge is not None:
        return spec.preference.judge
    return spec.teacher


def _judge_path(spec: GenerateSpec) -> str:
    if spec.preference is not None and spec.preference.judge is not None:
        return "generate.preference.judge"
    return "generate.teacher"


def _model_string(model: OpenAITeacher | LocalTeacher, where: str) -> str:
    """The request's ``model``, or a local model's folder (``where``: its recipe path)."""
    if model.kind == "openai":
        if model.api_key_env and not os.environ.get(model.api_key_env):  # before any folder
            raise InputRefused(
                f"{where}.api_key_env: environment variable {model.api_key_env} "
                "is not set (the endpoint's API key; never read from the recipe)"
            )
        return model.model
    from feinschliff.models import ModelFetchError, resolve_model

    try:
        return str(resolve_model(model.model))
    except ModelFetchError as exc:
        raise GenerateError(f"{where}.model: {exc}") from exc


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
