"""The learning-rate schedule name both backends hand transformers (TRL directly, Axolotl via
its ``lr_scheduler`` key): one mapping, so the same recipe warms up the same way on both."""

from __future__ import annotations


def scheduler_type(schedule: str, warmup_ratio: float) -> str:
    """The transformers scheduler: its 'constant' ignores warm-up, so warm-up needs its own."""
    return "constant_with_warmup" if schedule == "constant" and warmup_ratio > 0 else schedule
