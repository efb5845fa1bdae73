"""Rows that ``max_length`` leaves nothing to train on, counted and reported; the saved adapter
checked for NaN before the stage calls it finished.

TRL drops a row whose prompt alone fills ``max_length`` (DPO, KTO; SFT where the loss covers
the answers only: ``assistant_only_loss``, padding-free) and says so in a progress bar only.
The experimental ORPO keeps it with an empty completion: its mean log-probability over zero
tokens is NaN, which turns every adapter weight NaN within a step (transformers logs NaN losses
as 0.0 by default). Plain SFT keeps such a row and trains on its prompt alone. Here each is
counted, logged and recorded (``metrics.json``, the model card), ORPO's are dropped as DPO's
are, nothing left to train is an error naming ``train.hyperparameters.max_length``, and an
eval set left empty skips the final evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from feinschliff.recipe import ORPOTrain, Recipe, SFTTrain

log = logging.getLogger(__name__)

IGNORE = -100  # the label of a token the loss skips


class TrainingFailed(RuntimeError):
    """No row left to train within max_length, or the saved adapter holds NaN/inf weights."""


@dataclass(frozen=True)
class RowCounts:
    """Rows as trained: ``train_rows``/``eval_rows`` after the drops, which are counted apart.
    ``rows_answer_past_max_length``: trained SFT rows whose last answer starts at or beyond
    max_length, so they train on their prompt alone (0 with assistant_only_loss: TRL dropped
    them); None for the other methods."""

    train_rows: int
    dropped_train_rows: int
    eval_rows: int
    dropped_eval_rows: int
    rows_answer_past_max_length: int | None

    def metrics(self) -> dict[str, Any]:
        return asdict(self)


def drop_empty_completions(trainer) -> None:
    """ORPO's tokenized rows without a trained chosen or rejected token (their prompt filled
    max_length) removed, as DPO's trainer removes them itself."""

    def trains(row) -> bool:
        return any(x != IGNORE for x in row["chosen_labels"]) and any(
            x != IGNORE for x in row["rejected_labels"]
        )

    trainer.train_dataset = trainer.train_dataset.filter(trains)
    if trainer.eval_dataset is not None:
        trainer.eval_dataset = trainer.eval_dataset.filter(trains)


def check_rows(recipe: Recipe, trainer, raw, tokenizer) -> RowCounts:
    """Count what the built ``trainer`` trains and evaluates against the ``raw`` rows, log what
    max_length dropped or cut, and switch off evaluation when no eval row is left.

    Raises:
        TrainingFailed: no training row is left, naming train.hyperparameters.max_length.
    """
    spec = recipe.train
    max_length = spec.hyperparameters.max_length
    if isinstance(spec, ORPOTrain):
        drop_empty_completions(trainer)
    packed = isinstance(spec, SFTTrain) and spec.packing  # TRL's rows are packs, not rows
    given = len(raw["train"])
    given_eval = len(raw["eval"]) if "eval" in raw else 0
    kept = given if packed else len(trainer.train_dataset)
    kept_eval = given_eval if packed or trainer.eval_dataset is None else len(trainer.eval_dataset)
    setting = f"train.hyperparameters.max_length={max_length}"
    if kept == 0:
        raise TrainingFailed(
            f"no training row fits {setting}: the prompts of all {given} rows fill it, leaving "
            "no token to train on; raise max_length or shorten the prompts"
        )
    say = log.warning if trainer.is_world_process_zero() else log.debug  # once, not per rank
    for what, n, of in (("training", kept, given), ("eval", kept_eval, given_eval)):
        if n < of:
            say("%d of %d %s rows dropped: their prompt fills %s", of - n, of, what, setting)
    if given_eval and not kept_eval:
        say("no eval row is left: eval loss not measured (eval_loss null)")
        disable_eval(trainer)
    past = None
    if isinstance(spec, SFTTrain):  # with assistant_only_loss TRL dropped them (logged above)
        past = (
            0
            if spec.assistant_only_loss
            else count_answer_past(raw["train"], tokenizer, max_length)
        )
        if past:
            say(
                "%d of %d training rows train on their prompt only: their last answer starts at "
                "or beyond %s",
                past,
                given,
                setting,
            )
    return RowCounts(kept, given - kept, kept_eval, given_eval - kept_eval, past)


def disable_eval(trainer) -> None:
    """No evaluation at eval_steps nor at the end: the eval set is empty."""
    from transformers.trainer_utils import IntervalStrategy

    trainer.eval_dataset = None
    trainer.args.eval_strategy = IntervalStrategy.NO


def count_answer_past(rows, tokenizer, max_length: int) -> int:
    """SFT rows whose last assistant turn starts at or beyond ``max_length`` tokens: everything
    after the cut is the answer, so such a row trains on no answer token."""
    count = 0
    for row in rows:
        messages = row["messages"]
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=0)
        if not last:
            continue
        prompt = tokenizer.apply_chat_template(
            messages[:last], tokenize=True, add_generation_prompt=True
        )
        ids = prompt["input_ids"] if isinstance(prompt, Mapping) else prompt
        count += len(ids) >= max_length
    return count


def check_adapter_finite(adapter_dir: Path) -> None:
    """Refuse a saved adapter holding NaN or inf (a diverged run), as `register` would: found
    here, the stage fails instead of finishing with an adapter no one can serve.

    Raises:
        TrainingFailed: naming how many tensors and one of them.
    """
    from feinschliff.serving.adapter_files import nonfinite_tensors, read_index

    index = read_index(adapter_dir / "adapter_model.safetensors")
    bad = nonfinite_tensors(index)
    if bad:
        raise TrainingFailed(
            f"training diverged: NaN or inf in {len(bad)} of {len(index.tensors)} adapter "
            f"tensors (e.g. {bad[0][:120]}); the adapter in {adapter_dir} is not marked "
            "complete. Check the loss curve (nan) and lower train.hyperparameters.learning_rate"
        )
