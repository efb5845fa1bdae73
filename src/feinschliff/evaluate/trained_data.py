"""What a candidate was trained on, as its train output records it: the data's hash (evaluate
refuses ``--data`` that is other data) and the rows a warm start replayed into the training
(contamination and poisoning scan them with the data's rows)."""

from __future__ import annotations

import json
import logging
from typing import Any

from feinschliff.artifacts import AdapterRef, DatasetRef, rows_sha256
from feinschliff.evaluate.harness import EvalError
from feinschliff.poisoning import TRAINING_FILES
from feinschliff.train.data import COLUMNS, REPLAYED, kto_from_preferences, read_jsonl

log = logging.getLogger(__name__)


class TrainedOnOtherData(EvalError):
    """``--data`` is not the data the adapter was trained on: its contamination and poisoning
    numbers (and held-out metrics) would be about other rows."""


def train_metrics(adapter: AdapterRef) -> dict[str, Any]:
    """The train output's metrics.json ({} when it has none or it is unreadable)."""
    try:
        metrics = json.loads((adapter.dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def check_trained_on(adapter: AdapterRef, data: DatasetRef) -> None:
    """Refuse ``data`` unless the adapter's metrics.json records it as its training data: the
    same output hash (``dataset_sha256``, the ``.complete`` hash train was given), or the same
    rows (``dataset_rows_sha256``: a training is reused for another output with the same rows,
    e.g. a live pull that found nothing new). An older output that records no hash, or the
    output hash only (no rows hash: a newer ingest of the same rows writes another manifest,
    so another output hash), is accepted with a warning."""
    metrics = train_metrics(adapter)
    recorded = metrics.get("dataset_sha256")
    if not recorded:
        log.warning(
            "evaluate: %s records no dataset_sha256 (an older train output): cannot check that "
            "--data %s is the data it was trained on",
            adapter.dir,
            data.dir,
        )
        return
    if recorded == data.sha256:
        return
    rows = metrics.get("dataset_rows_sha256")
    if rows and rows == rows_sha256(data):
        return
    if not rows:  # trained before outputs recorded their rows: nothing to compare the rows with
        log.warning(
            "evaluate: %s records the output hash of its training data only (an older train "
            "output): --data %s is another output (sha256 %s, trained on %s), which may hold "
            "the same rows; make sure it is the data the adapter was trained on",
            adapter.dir,
            data.dir,
            data.sha256[:12],
            str(recorded)[:12],
        )
        return
    raise TrainedOnOtherData(
        f"--adapter {adapter.dir} was trained on data sha256 {str(recorded)[:12]}, not on "
        f"--data {data.dir} (sha256 {data.sha256[:12]}): give the data it was trained on "
        "(nothing was evaluated)"
    )


def replayed_rows(adapter: AdapterRef, data: DatasetRef | None) -> list[dict[str, Any]]:
    """The rows of an older dataset that a warm start replayed into the adapter's training:
    ``data/replayed.jsonl`` of its train output. An older output without that file but with
    ``replayed_rows`` in its metrics.json: the rows of its ``data/train.jsonl`` that are no rows
    of ``data`` (method columns only: no provenance, so the poisoning scan cannot attribute
    them)."""
    kept = adapter.dir / "data" / REPLAYED
    if kept.is_file():
        return read_jsonl(kept)
    if not train_metrics(adapter).get("replayed_rows"):
        return []
    trained = adapter.dir / "data" / "train.jsonl"
    if data is None or not trained.is_file():
        log.warning(
            "evaluate: %s replayed older rows but keeps neither data/%s nor data/train.jsonl: "
            "they are not checked for contamination and poisoning",
            adapter.dir,
            REPLAYED,
        )
        return []
    new = _row_keys(data)
    return [row for row in read_jsonl(trained) if _key(row) not in new]


def _row_keys(data: DatasetRef) -> set[str]:
    """Every training row of ``data`` as any method trains on it (its columns), as a key."""
    rows: list[dict[str, Any]] = []
    for name in TRAINING_FILES:
        if (data.dir / name).is_file():
            rows += read_jsonl(data.dir / name)
    pairs = [r for r in rows if all(c in r for c in COLUMNS["dpo"])]
    keys = set()
    for row in [*rows, *kto_from_preferences(pairs)]:
        for cols in COLUMNS.values():
            if all(c in row for c in cols):
                keys.add(_key({c: row[c] for c in cols}))
    return keys


def _key(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, ensure_ascii=False)
