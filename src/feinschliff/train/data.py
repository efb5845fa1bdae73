"""Training rows for each method, read from an ingest output; eval split; replay of older data.

Method -> file and row shape (TRL conversational shapes, FACTS 10.6):

- sft: ``sft.jsonl`` ``{"messages": [...]}``
- dpo, orpo: ``preference.jsonl`` ``{"prompt": [...], "chosen": [...], "rejected": [...]}``
- kto: ``kto.jsonl`` ``{"prompt", "completion", "label"}`` when ingest wrote rows there of
  both labels, else those plus the ones derived from ``preference.jsonl`` (each chosen answer ->
  label true, each rejected -> label false; an answer kto.jsonl has is not added again):
  ``kto_rows``. KTO training rows are shuffled once (seeded): TRL estimates KTO's KL term from
  completions rotated by one within a batch, which needs neighbours with different prompts.

The eval split (``hyperparameters.eval_fraction``) is by conversation, for every method: rows
whose conversations open alike (``conversation_key``) go to the same side. Otherwise an eval
row's other answers (several preference pairs or KTO verdicts on one prompt), its other turns
(a later turn's messages hold the earlier ones) or its copies (a ``generate.mix`` weight of 2)
were trained on, and the eval loss measured memorised text.

Replay: every training run snapshots the rows it trained on (with their provenance) under
``$FEINSCHLIFF_HOME/datasets/<dataset sha256>/``, so a warm start can mix in a share of the data
the production adapter was trained on (kept in the train output's ``data/replayed.jsonl``, which
evaluate scans for contamination and poisoning); never a prompt the new rows have (their feedback is
newer), a conversation of the eval split, nor one that ingest now holds out for evaluation
(``heldout/``: its split may have changed since, with ``feedback.seed`` or
``heldout_fraction``). This module does not tokenize; the backends do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from feinschliff.models import feinschliff_home

log = logging.getLogger(__name__)

COLUMNS = {
    "sft": ["messages"],
    "dpo": ["prompt", "chosen", "rejected"],
    "orpo": ["prompt", "chosen", "rejected"],
    "kto": ["prompt", "completion", "label"],
}


# In a train output's data/: the rows replayed into its training (``write_rows``).
REPLAYED = "replayed.jsonl"


class DataError(ValueError):
    """The ingest output has no usable rows for the recipe's method."""


class SnapshotError(DataError):
    """The rows could not be kept for replay: ``FEINSCHLIFF_HOME`` is full or read-only."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def kto_from_preferences(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Unpair preference rows: the chosen answer is desirable, the rejected one is not (a
    row's ``provenance``, where it has one, goes with both)."""
    out = []
    for row in rows:
        prov = {"provenance": row["provenance"]} if "provenance" in row else {}
        out.append({"prompt": row["prompt"], "completion": row["chosen"], "label": True} | prov)
        out.append({"prompt": row["prompt"], "completion": row["rejected"], "label": False} | prov)
    return out


def kto_rows(kto: list[dict[str, Any]], preference: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The KTO rows of a dataset: its ``kto.jsonl`` rows (thumbs verdicts), and where those
    are not of both labels (none at all, or thumbs of one kind only), also the rows unpaired
    from its preference pairs whose answer ``kto`` has no verdict on (the thumbs one wins).
    The mix writes a ``kto.jsonl`` made this way; training reads it so too."""
    if len({r.get("label") for r in kto if all(c in r for c in COLUMNS["kto"])}) >= 2:
        return kto
    answered = [r for r in kto if "prompt" in r and "completion" in r]
    judged = {_answer_key(r["prompt"], r["completion"]) for r in answered}
    pairs = [r for r in preference if all(c in r for c in COLUMNS["dpo"])]
    derived = kto_from_preferences(pairs)
    return kto + [r for r in derived if _answer_key(r["prompt"], r["completion"]) not in judged]


def _answer_key(prompt: Any, completion: Any) -> str:
    return json.dumps([prompt, completion], sort_keys=True, ensure_ascii=False)


def method_rows(method: str, data_dir: Path, *, provenance: bool = False) -> list[dict[str, Any]]:
    """The training rows of ``method`` from an ingest output, reduced to the method's columns
    (with ``provenance``: and each row's ``provenance``, as the replay snapshot keeps it for
    evaluate's poisoning scan)."""
    if method == "sft":
        rows = _read_if(data_dir / "sft.jsonl")
    elif method in ("dpo", "orpo"):
        rows = _read_if(data_dir / "preference.jsonl")
    elif method == "kto":
        # Ingest always writes kto.jsonl, empty when the feedback had no thumbs verdicts.
        rows = kto_rows(_read_if(data_dir / "kto.jsonl"), _read_if(data_dir / "preference.jsonl"))
    else:  # pragma: no cover - the recipe union is exhaustive
        raise DataError(f"unsupported method {method}")
    cols = COLUMNS[method]
    kept = [*cols, "provenance"] if provenance else cols
    rows = [{c: r[c] for c in kept if c in r} for r in rows if all(c in r for c in cols)]
    if not rows:
        raise DataError(f"no training rows for method {method} in {data_dir}")
    if method == "kto" and len({r["label"] for r in rows}) < 2:
        raise DataError("KTO needs both desirable and undesirable rows; the data has only one kind")
    return rows


def _read_if(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.exists() else []


def split_eval(
    rows: list[dict[str, Any]],
    fraction: float,
    seed: int,
    *,
    group: Callable[[dict[str, Any]], str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, eval): a seeded shuffle; at least one eval row when fraction > 0, never all rows.

    ``group``: rows with the same key go to the same side, ``fraction`` then counts groups
    (``prepare_rows``: ``conversation_key``).
    """
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    if group is None:
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        n_eval = min(max(1, round(len(rows) * fraction)), len(rows) - 1)
        return shuffled[n_eval:], shuffled[:n_eval]
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(group(row), []).append(row)
    if len(groups) < 2:
        log.warning("eval split skipped: all %d rows open the same conversation", len(rows))
        return rows, []
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    n_eval = min(max(1, round(len(keys) * fraction)), len(keys) - 1)
    train = [r for k in keys[n_eval:] for r in groups[k]]
    return train, [r for k in keys[:n_eval] for r in groups[k]]


def conversation_key(row: dict[str, Any]) -> str:
    """The opening of a row's conversation: its messages (SFT) or prompt (preference, KTO) up
    to and including the first user message, as normalised JSON (case and whitespace do not
    make it another conversation). Ingest's held-out split uses the same unit."""
    messages = row["messages"] if "messages" in row else row["prompt"]
    if isinstance(messages, list):
        for i, message in enumerate(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                messages = messages[: i + 1]
                break
    return json.dumps(_normalized(messages), sort_keys=True, ensure_ascii=False)


def _normalized(value: Any) -> Any:
    """Every string in ``value`` normalised as ingest's exact dedup does (NFKC, lower-cased,
    whitespace runs one space). Imported here: ingest's module is heavy for `estimate`."""
    from feinschliff.ingest.dedup import normalized_texts

    return normalized_texts(value)


def prompt_key(row: dict[str, Any]) -> str:
    """A row's whole prompt (SFT: its messages but the answer), as normalised JSON."""
    prompt = row["messages"][:-1] if "messages" in row else row.get("prompt", row)
    return json.dumps(_normalized(prompt), sort_keys=True, ensure_ascii=False)


def heldout_keys(data_dir: Path) -> set[str]:
    """``conversation_key`` of every row ingest held out for evaluation (``heldout/``)."""
    keys: set[str] = set()
    for name in ("sft.jsonl", "preference.jsonl", "kto.jsonl"):
        for row in _read_if(data_dir / "heldout" / name):
            if isinstance(row, dict) and ("messages" in row or "prompt" in row):
                keys.add(conversation_key(row))
    return keys


def mix_replay(
    new: list[dict[str, Any]],
    old: list[dict[str, Any]],
    fraction: float,
    seed: int,
    held_out: Sequence[dict[str, Any]] = (),
    group: Callable[[dict[str, Any]], str] | None = None,
    excluded: Collection[str] = (),
) -> tuple[list[dict[str, Any]], int]:
    """Add old rows so that about ``fraction`` of the result is replayed; returns (rows, n_old).

    An old row on a prompt the new rows have (``prompt_key``) is not replayed: the newer
    feedback on it wins (a human correction of an answer once accepted, a verdict turned), and
    replaying the old one would train both. Rows of a ``held_out`` (eval) row's prompt (with
    ``group``: of its group, or of a group in ``excluded``) are not replayed at all: the eval
    loss must stay on rows training never saw. Fewer old rows than wanted are all used.
    """
    if fraction <= 0 or not old:
        return new, 0
    seen = {prompt_key(r) for r in [*new, *held_out]}
    held = ({group(r) for r in held_out} | set(excluded)) if group else set()
    candidates = [r for r in old if prompt_key(r) not in seen and not (group and group(r) in held)]
    wanted = round(fraction / (1 - fraction) * len(new))
    rng = random.Random(seed)
    picked = rng.sample(candidates, min(wanted, len(candidates)))
    mixed = new + picked
    rng.shuffle(mixed)
    return mixed, len(picked)


def snapshot_dir(dataset_sha256: str) -> Path:
    return feinschliff_home() / "datasets" / dataset_sha256


def snapshot_rows(method: str, rows: list[dict[str, Any]], dataset_sha256: str) -> Path:
    """Keep the rows a training used, keyed by its dataset hash, for later replay.

    Raises:
        SnapshotError: naming the file, when it cannot be written (a full or read-only
            ``FEINSCHLIFF_HOME``); no temp file is left behind.
    """
    target = snapshot_dir(dataset_sha256) / f"{method}.jsonl"
    if target.exists():
        with contextlib.suppress(OSError):  # used again: `gc` keeps what changed lately
            os.utime(target)
        return target
    # a name of its own: two trainings of one dataset (test workers, two use cases) at once
    tmp = target.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        write_jsonl(tmp, rows)
        tmp.replace(target)
    except OSError as exc:
        with contextlib.suppress(OSError):  # on a read-only disk it was never created
            tmp.unlink(missing_ok=True)
        raise SnapshotError(
            f"cannot keep the training rows for replay in {target}: {exc.strerror or exc}: "
            "free space in FEINSCHLIFF_HOME or make it writable"
        ) from exc
    return target


def replay_rows(method: str, dataset_sha256: str | None) -> list[dict[str, Any]]:
    """Rows snapshotted by the training of ``dataset_sha256`` (empty when none are kept)."""
    if not dataset_sha256:
        return []
    path = snapshot_dir(dataset_sha256) / f"{method}.jsonl"
    if not path.exists():
        log.warning("no replay data for dataset %s (%s missing)", dataset_sha256[:12], path)
        return []
    with contextlib.suppress(OSError):  # replayed: in use, `gc` keeps what changed lately
        os.utime(path)
    return read_jsonl(path)


def prepare_rows(
    method: str,
    data_dir: Path,
    *,
    eval_fraction: float,
    seed: int,
    replay: list[dict[str, Any]] | None = None,
    replay_fraction: float = 0.0,
) -> dict[str, Any]:
    """Everything a backend needs: train/eval rows and counts for metrics.json, and the
    replayed rows as the snapshot kept them (``replayed``, with provenance where it has one:
    the train output keeps them for evaluate's contamination and poisoning checks)."""
    rows = method_rows(method, data_dir)
    # by conversation, not by row: see the module docstring
    train, evals = split_eval(rows, eval_fraction, seed, group=conversation_key)
    old = replay or []
    # trained on the method's columns only (a snapshot's provenance is for evaluate)
    stripped = [{c: r[c] for c in COLUMNS[method] if c in r} for r in old]
    train, n_replayed = mix_replay(
        train,
        stripped,
        replay_fraction,
        seed,
        held_out=evals,
        group=conversation_key,
        excluded=heldout_keys(data_dir) if replay else (),
    )
    picked = {id(r) for r in train}
    replayed = [full for full, r in zip(old, stripped, strict=True) if id(r) in picked]
    if method == "kto":
        train = shuffle_rows(train, seed)
    return {
        "train": train,
        "eval": evals,
        "new_rows": len(rows),
        "replayed_rows": n_replayed,
        "replayed": replayed,
    }


def shuffle_rows(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """A seeded shuffled copy. KTO needs it: TRL samples KTO batches in order and pairs each
    prompt with its neighbour's completion for the KL term; rows derived from preferences come
    as (p, chosen), (p, rejected), so without a shuffle half those "mismatched" pairs match."""
    shuffled = rows[:]
    random.Random(f"kto-order-{seed}").shuffle(shuffled)
    return shuffled


def write_rows(prepared: dict[str, Any], out: Path) -> dict[str, Path]:
    """Materialise train/eval rows as JSONL files (inputs for TRL's loader and Axolotl), and
    the replayed rows as ``REPLAYED`` (empty without replay; no backend input): evaluate scans
    them with the data for contamination and poisoning."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"train": out / "train.jsonl"}
    write_jsonl(paths["train"], prepared["train"])
    write_jsonl(out / REPLAYED, prepared.get("replayed") or [])
    if prepared["eval"]:
        paths["eval"] = out / "eval.jsonl"
        write_jsonl(paths["eval"], prepared["eval"])
    elif (out / "eval.jsonl").exists():
        (out / "eval.jsonl").unlink()
    return paths
