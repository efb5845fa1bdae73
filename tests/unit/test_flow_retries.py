"""The evaluate task retries transient errors only: a retry re-evaluates every model from the
start, hours of GPU time, and a deterministic failure ends with the same message again."""

from __future__ import annotations

import pytest

from feinschliff.artifacts import OutputInUse
from feinschliff.evaluate.harness import EvalError
from feinschliff.evaluate.judge import JudgeError


class _Failed:
    """A failed task state: ``result()`` raises what the task raised."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    def result(self):
        raise self.exc


def _retries(exc: BaseException) -> bool:
    from flows.tasks import evaluate_task

    condition = evaluate_task.retry_condition_fn
    assert condition is not None, "evaluate retries every failure"
    return condition(evaluate_task, None, _Failed(exc))


@pytest.mark.parametrize(
    "exc",
    [
        EvalError("unknown lm-eval tasks ['arc_dee']"),
        EvalError("offline (HF_HUB_OFFLINE=1) and these Hub datasets are not cached"),
        JudgeError("judge http://j/v1/chat/completions refused the request: HTTP 401"),
        JudgeError("judge http://j/v1/chat/completions unavailable after 4 attempt(s)"),
        OutputInUse("--out overlaps the adapter folder"),
    ],
)
def test_a_deterministic_failure_is_not_retried(exc):
    assert not _retries(exc)


@pytest.mark.parametrize("exc", [RuntimeError("CUDA error: unspecified launch failure"), OSError()])
def test_a_transient_failure_is_retried(exc):
    assert _retries(exc)


def _ingest_retries(exc: BaseException) -> bool:
    from flows.tasks import ingest_task

    condition = ingest_task.retry_condition_fn
    assert condition is not None, "ingest retries every failure"
    return condition(ingest_task, None, _Failed(exc))


def _wrapped(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    "exc",
    [
        "too much of the feedback was quarantined: 12 % > 5 %",
        "langfuse/page-3.json: cannot be read to its end (truncated JSON)",
        "pseudonymize needs FEINSCHLIFF_PII_KEY",
    ],
)
def test_a_deterministic_ingest_failure_is_not_retried(exc):
    """Reading a million records again, twice, ends with the same message (and the failure
    notice waited for it)."""
    from feinschliff.ingest.stage import IngestError, InvalidSource

    assert not _ingest_retries(IngestError(exc))
    assert not _ingest_retries(InvalidSource("no known export format in data/x"))
    assert not _ingest_retries(OutputInUse("--out holds another stage's output"))


def test_an_ingest_whose_live_pull_failed_is_retried():
    from feinschliff.ingest.pull import PullFailed
    from feinschliff.ingest.stage import IngestError

    outage = PullFailed("Langfuse pull: http://lf/api/public/traces answered 503")
    assert _ingest_retries(_wrapped(IngestError(str(outage)), outage))
    assert _ingest_retries(OSError("No space left on device"))


@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        ("conflict", False),
        ("preflight", False),
        ("transient", True),
    ],
)
def test_register_retries_only_what_may_succeed_next_time(exc, retried):
    from feinschliff.registry import AliasConflict
    from feinschliff.serving.preflight import PreflightError
    from flows.tasks import register_task

    raised = {
        "conflict": AliasConflict("production moved meanwhile"),
        "preflight": PreflightError("adapter", ["rank 64 > max_lora_rank 16"]),
        "transient": ConnectionError("registry store unreachable"),
    }[exc]
    condition = register_task.retry_condition_fn
    assert condition(register_task, None, _Failed(raised)) is retried
