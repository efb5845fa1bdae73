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
