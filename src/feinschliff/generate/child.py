"""Child-process entry point: ``python -m feinschliff.generate.child JOB.json``.

distilabel installs signal handlers and its own logging queue, which break inside Prefect task
threads (FACTS section 2), so the pipeline runs here, in a process of its own: it reads the job
(scrubbed seeds, the recipe section, paths; never an API key), runs the pipeline, saves the
Distiset to ``job.distiset`` and writes ``job.status`` with the ledger's verdict. Exit code 0
means the pipeline ran (the status says whether it stopped on budget or teacher failure).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

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
    from feinschliff.generate.ledger import Ledger
    from feinschliff.generate.tasks import build_pipeline

    pipeline = build_pipeline(job)
    distiset = pipeline.run(use_cache=False)
    distiset.save_to_disk(job.distiset, save_card=False, save_pipeline_log=True)
    state = Ledger(Path(job.ledger), None, None).read()
    error = None
    if job.seeds and not (state["requests"] or state["cache_hits"] or state["refused"]):
        # distilabel logs a step that fails to load or crashes and returns what it has.
        error = "the pipeline asked the teacher nothing (a step failed; see the log above)"
    status = {
        "state": "failed"
        if state["failed"] or error
        else "budget"
        if state["budget_exhausted"]
        else "ok",
        "error": error,
        "leaves": {name: len(ds["train"]) for name, ds in distiset.items()},
        **state,
    }
    Path(job.status).write_text(json.dumps(status, indent=2) + "\n")
    return status


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    job = GenerateJob.model_validate_json(Path(argv[0]).read_text(encoding="utf-8"))
    status = run_job(job)
    print(json.dumps({k: status[k] for k in ("state", "leaves", "requests", "cache_hits")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
