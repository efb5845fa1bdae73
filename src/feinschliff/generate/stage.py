"""The generate stage: seeds -> (child process) distilabel -> filtered rows in ingest's contract.

Writes into ``out``: ``sft.jsonl``, ``preference.jsonl``, ``manifest.json`` (teacher, judge,
prompt template version, seed fingerprints, PII findings, request/token/cache counts, drops by
reason, sha256 of each output), ``distiset/`` (the saved Distiset, for inspection),
``generate.log`` (the child's log) and the ``.complete`` marker last.

Caching, two levels:
- output: ``out`` complete and made from the same inputs (seed file hashes, the section minus
  operational knobs, template version, feedback and eval-set fingerprints: the eval sets ingest
  decontaminates against, ``eval_set_names``) -> reused as is; no PII engine, no child
  process, no teacher call. An output cut short by the budget is never
  reused (the rerun continues from the request cache).
- request: every teacher reply is kept in ``$FEINSCHLIFF_HOME/cache/generate/`` keyed by the
  request body, so a rerun after an outage, a budget stop or a filter change repeats no
  completed request.

Not here: mixing with the feedback data (``feinschliff.generate.mix``), held-out splits
(synthetic rows are never evaluation data).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from feinschliff.artifacts import (
    COMPLETE,
    DatasetRef,
    completed_hash,
    input_key,
    mark_complete,
    prepare_out,
    rows_sha256,
    sha256_file,
    write_json,
)
from feinschliff.generate.postprocess import FILTERS_VERSION
from feinschliff.generate.templates import TEMPLATE_VERSION
from feinschliff.ngrams import EvalIndex, N
from feinschliff.recipe import Recipe, evaluated_sets
from feinschliff.specs.evaluate import USECASE_TASK
from feinschliff.specs.generate import GenerateSpec, LocalTeacher, OpenAITeacher

if TYPE_CHECKING:
    from feinschliff.generate.ledger import Ledger
    from feinschliff.ingest.decontam import EvalSets

log = logging.getLogger(__name__)

# Knobs that change how fast or how far a run gets, not what a finished run contains.
OPERATIONAL = {"concurrency", "retries", "backoff_s", "budget", "mix"}


class GenerateError(RuntimeError):
    """Bad seeds, a failed teacher or a crashed generation process; the message says which."""


def run_generate(recipe: Recipe, out: Path, feedback: DatasetRef | None = None) -> DatasetRef:
    """Generate synthetic rows for ``recipe.generate`` into ``out``; see the module docstring.

    ``feedback``: the ingest output of the same run; generated questions that duplicate one of
    its prompts (training or held-out) are dropped.
    """
    spec = recipe.generate
    if spec is None:
        raise GenerateError("the recipe has no `generate` section")
    ngram = recipe.feedback.decontamination.ngram  # ingest's n, the gate's too
    names = eval_set_names(recipe)
    try:
        key = recipe_cache_key(recipe, feedback)
    except FileNotFoundError as exc:  # a JSONL eval set the recipe names is missing
        raise GenerateError(str(exc)) from exc
    digest = reusable_output(out, key)
    if digest is not None:
        log.info("generate: reusing %s (same inputs, complete)", out)
        return DatasetRef(path=str(out), sha256=digest)

    from feinschliff.generate.seeds import SeedError, plan_requests, read_seeds

    started = time.monotonic()
    teacher = _model_string(spec.teacher, "generate.teacher")
    judge = _model_string(_judge(spec), _judge_path(spec))
    prepare_out(out, key, "generate")
    try:
        seeds = read_seeds(spec.seeds)
    except SeedError as exc:
        raise GenerateError(str(exc)) from exc
    plan = plan_requests(seeds.items, spec.num_instructions, spec.instructions_per_seed)
    status = _run_child(spec, out, plan, teacher, judge)

    from feinschliff.generate.postprocess import feedback_prompts, filter_rows, rows_from_distiset

    result = rows_from_distiset(_load_leaves(out / "distiset"), spec, teacher, judge)
    prompts = (
        feedback_prompts(feedback.dir)
        if feedback and spec.filters.dedup_against_feedback
        else set()
    )
    sets = _find_eval_sets(names) if spec.filters.decontaminate else None
    index = _eval_index(ngram, sets) if sets is not None else None
    sft = filter_rows(result.sft, spec, prompts, index, result.drops["sft"])
    pref = filter_rows(result.preference, spec, prompts, index, result.drops["preference"])
    _write_jsonl(out / "sft.jsonl", sft)
    _write_jsonl(out / "preference.jsonl", pref if spec.preference else [])

    stopped = status["budget_exhausted"]
    manifest: dict[str, Any] = {
        "stage": "generate",
        "teacher": _describe(spec.teacher),
        "judge": _describe(_judge(spec)) if spec.preference else None,
        "template_version": TEMPLATE_VERSION,
        "seeds": {
            "count": len(seeds.items),
            "self_instruct_requests": len(plan),
            "inputs": seeds.inputs,
            "pii_mode": spec.seeds.pii,
            "pii_findings": dict(sorted(seeds.pii_findings.items())),
        },
        "teacher_usage": {
            k: status[k]
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
        "seconds": round(time.monotonic() - started, 1),
        "sha256": {n: sha256_file(out / n) for n in ("sft.jsonl", "preference.jsonl")},
    }
    write_json(out / "manifest.json", manifest)
    shutil.rmtree(out / ".work", ignore_errors=True)
    if not sft and not pref:  # not marked complete: a rerun tries again (replies are cached)
        refused = uniform_rejection(status)
        if refused is not None:
            raise GenerateError(refused)
        raise GenerateError(
            f"no rows survived generation and filtering; see {out / 'manifest.json'} drops"
        )
    digest = mark_complete(out, stage="generate", key=key, stopped_by_budget=stopped)
    if stopped:
        log.warning(
            "generate: stopped early, %s; %s rows written (rerun to continue)", stopped, len(sft)
        )
    return DatasetRef(path=str(out), sha256=digest)


# --------------------------------------------------------------------------- cache


def cache_key(
    spec: GenerateSpec,
    feedback: DatasetRef | None,
    *,
    ngram: int = N,
    eval_sets: Sequence[str] = (),
) -> str:
    """Hash of everything a finished output depends on (and of nothing it does not).

    ``ngram``: the decontamination n (the recipe's ``feedback.decontamination.ngram``);
    ``eval_sets``: the eval sets rows are decontaminated against (``eval_set_names(recipe)``),
    by name and file content."""
    return input_key(
        "generate",
        TEMPLATE_VERSION,
        FILTERS_VERSION,
        spec.model_dump(mode="json", exclude=OPERATIONAL),
        _seed_fingerprint(spec),
        rows_sha256(feedback) if feedback and spec.filters.dedup_against_feedback else None,
        (_eval_fingerprint(eval_sets), ngram) if spec.filters.decontaminate else None,
    )


def recipe_cache_key(recipe: Recipe, feedback: DatasetRef | None) -> str:
    """:func:`cache_key` as ``run_generate`` computes it for ``recipe`` (the flow's key too)."""
    assert recipe.generate is not None
    ngram = recipe.feedback.decontamination.ngram  # ingest's n, the gate's too
    return cache_key(recipe.generate, feedback, ngram=ngram, eval_sets=eval_set_names(recipe))


def eval_set_names(recipe: Recipe) -> list[str]:
    """The eval sets generated rows are decontaminated against: ingest's, the recipe's
    ``evaluate.tasks`` and ``feedback.decontamination.eval_sets`` (task names or JSONL paths).
    Generate's own switch is ``generate.filters.decontaminate``. ``usecase_heldout`` is left
    out: ingest's own held-out split, no eval set (as in ingest and the pipeline)."""
    names = [*evaluated_sets(recipe), *recipe.feedback.decontamination.eval_sets]
    return [n for n in names if n != USECASE_TASK]


def reusable_output(out: Path, key: str) -> str | None:
    digest = completed_hash(out)
    if digest is None:
        return None
    marker = json.loads((out / COMPLETE).read_text())
    if marker.get("key") != key or marker.get("stopped_by_budget"):
        return None
    return digest


def stopped_by_budget(out: Path) -> bool:
    """A finished output that stopped on its budget: a rerun continues it."""
    if completed_hash(out) is None:
        return False
    return bool(json.loads((out / COMPLETE).read_text()).get("stopped_by_budget"))


def _seed_fingerprint(spec: GenerateSpec) -> dict[str, str]:
    from feinschliff.generate.seeds import DOC_SUFFIXES

    files = []
    if spec.seeds.topics and Path(spec.seeds.topics).is_file():
        files.append(Path(spec.seeds.topics))
    if spec.seeds.documents and Path(spec.seeds.documents).is_dir():
        folder = Path(spec.seeds.documents)
        files += sorted(p for p in folder.rglob("*") if p.suffix in DOC_SUFFIXES)
    return {str(p): sha256_file(p) for p in files}


def _find_eval_sets(names: Sequence[str]) -> EvalSets:
    from feinschliff.ingest.decontam import find_eval_sets

    return find_eval_sets(names)


def _eval_fingerprint(names: Sequence[str]) -> dict[str, Any]:
    # The eval sets' data files, found as ingest finds them; without importing the evaluate
    # package (matplotlib, lm-eval): a cache hit must stay instant.
    sets = _find_eval_sets(names)
    files = {name: sha256_file(path) for name, path in sets.files.items()}
    return {"files": files, "unchecked": sets.unchecked}


def _eval_index(ngram: int = N, sets: EvalSets | None = None) -> EvalIndex:
    """The index of ``sets`` (None: every bundled task), read as ingest reads them (a broken
    line is skipped)."""
    from feinschliff.ingest.decontam import Decontaminator
    from feinschliff.paths import bundled_tasks_dir

    if sets is None:
        sets = _find_eval_sets([p.stem for p in sorted(bundled_tasks_dir().glob("*.jsonl"))])
    return Decontaminator(sets, ngram).index


# --------------------------------------------------------------------------- child process


def request_cache_path(model: OpenAITeacher | LocalTeacher) -> Path:
    """One request cache per endpoint and model (shared by every recipe that uses them)."""
    from feinschliff.models import feinschliff_home

    ident = f"{model.base_url}|{model.model}" if model.kind == "openai" else f"local|{model.model}"
    name = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return feinschliff_home() / "cache" / "generate" / f"requests-{name}.jsonl"


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
        )
    if failed is not None:  # the teacher failed and the child was stopped
        raise _teacher_failure(failed, job.teacher_cache)
    status_path = Path(job.status)
    if code != 0 or not status_path.exists():
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise GenerateError(f"the generation process failed (exit {code}); log {log_path}:\n{tail}")
    status = json.loads(status_path.read_text())
    if status["error"]:
        raise GenerateError(f"the generation pipeline failed: {status['error']}; log {log_path}")
    if status["failed"]:
        raise _teacher_failure(status, job.teacher_cache)
    return status


# Once the ledger records a teacher failure, every later request is refused at once and the
# child's output is of no use (the run fails): it may still end by itself, or finish a request
# already in flight (its reply is cached), but after this many seconds without progress (its log
# and the ledger unchanged), or this many in all, it is stopped.
FAILED_QUIET_S = 5.0
FAILED_MAX_S = 60.0
_POLL_S = 0.5


def _watch_child(
    cmd: list[str], log_file: IO[bytes], log_path: Path, ledger: Ledger
) -> tuple[int, dict[str, Any] | None]:
    """Run the child in a process group of its own (distilabel starts worker processes) and
    wait for it: its exit code and None, or, when it was stopped after a teacher failure,
    the ledger's state. However this returns or raises (KeyboardInterrupt included), the whole
    group is gone afterwards; the child itself ends its group when this process dies
    (``child._die_with_parent``)."""
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        failed_at = quiet_since = 0.0
        seen: tuple[Any, ...] = ()
        while True:
            try:
                return proc.wait(timeout=_POLL_S), None
            except subprocess.TimeoutExpired:
                pass
            state = _ledger_state(ledger)
            if not state.get("failed"):
                continue
            now = time.monotonic()
            progress = (_stamp(log_path), _stamp(ledger.path))
            if not failed_at or progress != seen:
                failed_at = failed_at or now
                seen, quiet_since = progress, now
            if now - quiet_since >= FAILED_QUIET_S or now - failed_at >= FAILED_MAX_S:
                log.info("generate: teacher failed; stopping the generation process")
                _stop_group(proc)
                return proc.returncode, _ledger_state(ledger)
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM the child's process group, SIGKILL whatever is left of it after ``timeout``
    seconds (and any worker that outlived a child that has exited)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    # bounded: an interrupt at the wrong moment can leave Popen's wait lock taken, and this
    # runs in a `finally`; a SIGKILLed child not reaped here is reaped by init after we exit
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


def _ledger_state(ledger: Ledger) -> dict[str, Any]:
    try:
        return ledger.read()
    except (OSError, ValueError):  # not written yet (the writer replaces it atomically)
        return {}


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _teacher_failure(state: dict[str, Any], cache: str) -> GenerateError:
    return GenerateError(
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
        return model.model
    from feinschliff.models import ModelFetchError, resolve_model

    try:
        return str(resolve_model(model.model))
    except ModelFetchError as exc:
        raise GenerateError(f"{where}.model: {exc}") from exc


def _describe(model: OpenAITeacher | LocalTeacher) -> dict[str, Any]:
    """The teacher as recorded in the manifest: never the key, only the variable's name."""
    return model.model_dump(mode="json")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
