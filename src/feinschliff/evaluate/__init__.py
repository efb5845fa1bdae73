"""Evaluation: lm-eval German tasks for base, production and candidate -> report.json."""

from feinschliff.evaluate.stage import run_evaluate

__all__ = ["run_evaluate"]
