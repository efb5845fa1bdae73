"""Child-process entry point: ``python -m feinschliff.generate.child JOB.json [PARENT_PID]``.

distilabel installs signal handlers and its own logging queue, which break inside Prefect task
threads (FACTS section 2), so the pipeline runs here, in a process of its own: it reads the job
(scrubbed seeds, the recipe section, paths; never an API key), runs the pipeline, saves the
Distiset to ``job.distiset`` and writes ``job.status`` with the ledger's verdict. Exit code 0
means the pipeline ran (the status says whether it stopped on budget or teacher failure).

The stage starts it as the leader of a process group of its own, which distilabel's worker
processes join; given the stage's pid, it ends that whole group when the stage is gone (killed,
or dead by a signal it did not handle), so no worker is left behind.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from feinschliff.specs.generate import GenerateSpec


class GenerateJob(BaseModel):
    """Everything the child needs, written by the parent as JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: GenerateSpec
    seeds: list[tuple[str, str]]  # (seed id, PII-scrubbed text) per self-instruct request
    teacher_model: str  # the request `model` string, or a resolved local model folder
    judge_model: str
    teacher_cache: str
    judge_cache: str
    ledger: str
    pipeline_cache: str
    distiset: str
    status: str


def run_job(job: GenerateJob) -> dict[str, object]:
    from feinschliff.generate.ledger import Ledger, budget_stop
    from feinschliff.generate.tasks import build_pipeline

    pipeline = build_pipeline(job)
    done = threading.Event()
    _stop_on_lost_worker(pipeline, done)
    try:
        distiset = pipeline.run(use_cache=False)
    finally:
        done.set()
    distiset.save_to_disk(job.distiset, save_card=False, save_pipeline_log=True)
    state = Ledger(Path(job.ledger), None, None).read()
    leaves = {name: len(ds["train"]) for name, ds in distiset.items()}
    error = None
    if job.seeds and not (state["requests"] or state["cache_hits"] or state["refused"]):
        # distilabel logs a step that fails to load or crashes and returns what it has.
        error = "the pipeline asked the teacher nothing (a step failed; see the log above)"
    elif job.seeds and not leaves and (state["requests"] or state["cache_hits"]):
        # e.g. its output thread died writing a batch: the replies were paid for, yet the run
        # would end "ok" with no rows, and "no rows survived filtering" would blame the filters
        answered = state["requests"] + state["cache_hits"]
        error = (
            f"the pipeline saved no output although {answered} request(s) were answered "
            "(a step's output could not be written; see the traceback in the log)"
        )
    status = {
        "state": "failed" if state["failed"] or error else "budget" if budget_stop(state) else "ok",
        "error": error,
        "leaves": leaves,
        **state,
    }
    Path(job.status).write_text(json.dumps(status, indent=2) + "\n")
    return status


def _die_with_parent(parent: int) -> None:
    """End this process and every distilabel worker (the whole process group, when this
    process leads it) as soon as the stage process ``parent`` is gone.

    A thread that watches the parent, not a signal handler: a Python SIGTERM handler would be
    inherited by the forked workers, where it runs only once their main thread wakes up, so
    the pool's own SIGTERM at the end of a run could leave a worker alive and the run hung."""
    if os.getpgid(0) != os.getpid():  # started by hand, in someone else's group: leave it be
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _stop_on_lost_worker(pipeline: Any, done: threading.Event) -> None:
    """End this process group when a worker of the pipeline's pool dies mid-run (the kernel's
    OOM killer, a segfault in a local model): the pool starts a replacement, the lost step's
    batch is never finished and distilabel waits for it forever, and so would the stage.
    Pool workers live for the whole run (no ``maxtasksperchild``), so a new worker pid in the
    running pool means one died. The stage then fails with this log's tail; every reply
    received is in the request cache, so a rerun repeats none."""

    def watch() -> None:
        pool, seen = None, set()
        while not done.wait(0.5):
            current = getattr(pipeline, "_pool", None)  # distilabel's Pool, set inside run()
            pids = {w.pid for w in list(getattr(current, "_pool", None) or [])}
            if current is not pool:
                pool, seen = current, pids
            elif lost_worker(seen, pids, getattr(current, "_state", None)):
                print(LOST_WORKER, file=sys.stderr, flush=True)
                if os.getpgid(0) == os.getpid():
                    os.killpg(0, signal.SIGKILL)
                os._exit(70)

    threading.Thread(target=watch, name="lost-worker", daemon=True).start()


LOST_WORKER = (
    "feinschliff: a worker process of the generation pipeline died mid-run (killed, e.g. out "
    "of memory, or crashed); distilabel would wait for its batch forever, so the generation "
    "stops here. Completed teacher replies are cached: a rerun repeats none of them."
)


def lost_worker(seen: set[int], pids: set[int], state: str | None) -> bool:
    """Whether the running pool (``state`` "RUN") replaced one of its workers ``seen``."""
    return state == "RUN" and bool(seen) and bool(pids - seen)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        _die_with_parent(int(argv[1]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    job = GenerateJob.model_validate_json(Path(argv[0]).read_text(encoding="utf-8"))
    status = run_job(job)
    print(json.dumps({k: status[k] for k in ("state", "leaves", "requests", "cache_hits")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
