"""Tokens of a training over an ingest output (``estimate --data``): counted per row with the
base model's tokenizer and chat template where the model is local, else at 4 characters per
token; the tokens one run trains on (epochs or max_steps); and a warning when rows are so short
that the assumed MFU is far too high.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from feinschliff.estimate.shape import EstimateError

# Below this share of max_length per row, unpacked micro-batches leave a GPU mostly idle.
SHORT_ROW_SHARE = 0.25


def dataset_tokens(recipe, data_dir: Path) -> tuple[int, str]:
    """Tokens one training run processes over an ingest output; returns (tokens, how counted)."""
    per_row, how = row_tokens(recipe, data_dir)
    return trained_tokens(recipe, per_row), how


def row_tokens(recipe, data_dir: Path) -> tuple[list[int], str]:
    """Tokens of each training row of an ingest output (capped at max_length), and how counted.

    Counted with the base model's tokenizer and the chat template training uses (ChatML with
    ``train.chat_template: chatml``) when the model is local, else estimated at 4 characters
    per token.
    """
    from feinschliff.train.data import method_rows
    from feinschliff.train.templates import CHATML

    spec = recipe.train
    hp = spec.hyperparameters
    rows = method_rows(spec.method, data_dir)
    texts = [_row_conversations(spec.method, r) for r in rows]
    tokenizer, how = _local_tokenizer(recipe), "tokenizer"
    template = CHATML if spec.chat_template == "chatml" else None
    if tokenizer is not None and template is None and not tokenizer.chat_template:
        raise EstimateError(
            f"train.chat_template: model, but {recipe.base_model.name} has no chat template: "
            "set train.chat_template: chatml"
        )
    per_row = []
    for convs in texts:
        n = 0
        for conv in convs:
            if tokenizer is not None:
                ids = tokenizer.apply_chat_template(conv, tokenize=True, chat_template=template)
                n += min(len(ids["input_ids"]), hp.max_length)
            else:
                n += min(sum(len(m["content"]) for m in conv) // 4, hp.max_length)
        per_row.append(n)
    if tokenizer is None:
        how = "4 characters per token"
    return per_row, how


def trained_tokens(recipe, per_row: list[int]) -> int:
    """Tokens of one training run over rows of these lengths: epochs, or ``max_steps`` x batch x
    accumulation x processes."""
    spec = recipe.train
    hp = spec.hyperparameters
    epoch = sum(per_row)
    if not per_row:
        return 0
    if hp.max_steps > 0:
        # every data-parallel process (DDP, FSDP, ZeRO-3) takes its own micro-batches per step
        rows_seen = (
            hp.max_steps * hp.batch_size * hp.gradient_accumulation_steps * spec.num_processes
        )
        return round(rows_seen * epoch / len(per_row))
    return round(epoch * hp.epochs)


def short_rows_note(recipe, per_row: list[int], mfu: float) -> str | None:
    """A warning when unpacked rows are so short that the assumed MFU is far too high.

    Measured on an H100 (bench/README.md, ``bench/gpu_train.py``): the 8B recipe on the
    support sample rows (~170 tokens) at micro-batch 4 trained at 4.5 % MFU unpacked and 19.5 %
    with packing, against 31 % for full 2048-token rows."""
    spec = recipe.train
    hp = spec.hyperparameters
    # padding-free batches are flattened like packed ones: no padding, one long row
    if not per_row or getattr(spec, "packing", False) or getattr(spec, "padding_free", False):
        return None
    # a preference row holds two conversations (chosen and rejected), each a sequence
    median = statistics.median(per_row) / (2 if spec.method in ("dpo", "orpo") else 1)
    if median > SHORT_ROW_SHARE * hp.max_length:
        return None
    advice = "; set train.packing: true" if hasattr(spec, "packing") else ""
    return (
        f"rows are short (median {median:.0f} of max_length {hp.max_length} tokens): unpacked "
        f"micro-batches of {hp.batch_size} leave a GPU far below MFU {mfu:.0%}. Measured on an "
        "H100: ~170-token support rows at micro-batch 4 ran at 4.5 % MFU unpacked and 19.5 % "
        f"packed (bench/README.md), so expect several times the GPU-hours above{advice}"
    )


def _row_conversations(method: str, row: dict[str, Any]) -> list[list[dict[str, str]]]:
    if method == "sft":
        return [row["messages"]]
    if method == "kto":
        return [row["prompt"] + row["completion"]]
    return [row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]]


def _local_tokenizer(recipe):
    from feinschliff.models import ModelFetchError, resolve_model

    try:
        path = Path(resolve_model(recipe.base_model.name, fetch=False))
    except ModelFetchError:
        return None
    if not (path / "tokenizer_config.json").exists():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
