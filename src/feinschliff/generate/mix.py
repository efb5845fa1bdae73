"""Mix a generate output into an ingest output: one training dataset in ingest's contract.

``sft.jsonl`` and ``preference.jsonl`` hold both sources, each scaled by its weight in the
recipe's ``generate.mix``: weight 2 repeats every row twice, 0.5 keeps exactly half of the rows
(half rounded up: floor(0.5 x n + 0.5), the first in the order of a hash of each row, so reruns
pick the same rows), 0 drops the source; a weight above 0 keeps at least one row of a source
that has any. Everything else of the ingest output (``heldout/``, ``kto.jsonl``,
``quarantine.jsonl``) is copied unchanged: synthetic rows never enter the evaluation split.
``manifest.json`` records both input refs, the weights and the counts per source. A run holds
its output (``outlock``): a second one on the same folder is refused (``OutputBusy``).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

from feinschliff.artifacts import (
    DatasetRef,
    input_key,
    mark_complete,
    prepare_out,
    reusable,
    rows_sha256,
    sha256_file,
    write_json,
)
from feinschliff.generate.outlock import hold_output
from feinschliff.specs.generate import MixSpec

MIXED = ("sft.jsonl", "preference.jsonl")
# in the key: outputs of the former per-row coin flip ("exact-share") and of round()'s banker's
# rounding ("exact-share": 1 row at 0.5 kept none, 3 rows kept 2) are not reused
SELECTION = "exact-share-half-up"


def weighted(rows: list[dict[str, Any]], weight: float, salt: str) -> list[dict[str, Any]]:
    """``floor(weight)`` copies of every row plus exactly ``share(n, weight % 1)`` more: the
    rows first in the order of a salted hash of their content (reruns pick the same ones).

    ``share`` rounds half up (``floor(x + 0.5)``, not ``round``'s half to even: 1 row at 0.5
    kept none, 3 kept 2), and a weight above 0 keeps at least one row of ``rows`` (a small
    synthetic set at a small weight is not dropped as if the weight were 0)."""
    whole, frac = int(math.floor(weight)), weight - math.floor(weight)
    out = [row for row in rows for _ in range(whole)]
    # round(.., 9): 2.05 % 1 is 0.0499999..., and x 10 must still round to 1
    extra = math.floor(round(frac * len(rows), 9) + 0.5)
    if weight > 0 and rows and not out:
        extra = max(extra, 1)

    def rank(i: int) -> bytes:
        blob = json.dumps(rows[i], sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(salt.encode() + b"\0" + blob).digest()

    # Independent coin flips per row would keep 62 of 100 at 0.5; a share of a sorted list
    # keeps exactly 50.
    picked = sorted(sorted(range(len(rows)), key=rank)[:extra])
    return out + [rows[i] for i in picked]


def merge_datasets(
    feedback: DatasetRef, generated: DatasetRef, mix: MixSpec, out: Path
) -> DatasetRef:
    """A new dataset in ``out``: the feedback rows and the generated rows, weighted.

    Raises:
        OutputBusy: another run is writing ``out``.
    """
    key = input_key(
        "mix",
        SELECTION,
        rows_sha256(feedback),
        generated.sha256,
        mix.model_dump(mode="json"),
    )
    with hold_output(out, reuse=reusable(out, key) is not None):
        return _merge(feedback, generated, mix, out, key)


def _merge(
    feedback: DatasetRef, generated: DatasetRef, mix: MixSpec, out: Path, key: str
) -> DatasetRef:
    digest = reusable(out, key)
    if digest is not None:
        return DatasetRef(path=str(out), sha256=digest)
    prepare_out(out, key, "mix")
    counts: dict[str, dict[str, int]] = {}
    for name in MIXED:
        fb = _read(feedback.dir / name)
        gen = _read(generated.dir / name)
        rows = weighted(fb, mix.feedback, f"feedback:{name}") + weighted(
            gen, mix.synthetic, f"synthetic:{name}"
        )
        counts[name] = {"feedback": len(fb), "synthetic": len(gen), "mixed": len(rows)}
        _write(out / name, rows)
    copied = []
    for name in ("heldout", "kto.jsonl", "quarantine.jsonl"):
        src = feedback.dir / name
        if src.is_dir():
            shutil.copytree(src, out / name, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy2(src, out / name)
        else:
            continue
        copied.append(name)
    write_json(
        out / "manifest.json",
        {
            "stage": "mix",
            "feedback": feedback.model_dump(),
            "generated": generated.model_dump(),
            "weights": mix.model_dump(mode="json"),
            "counts": counts,
            "copied_from_feedback": copied,
            "sha256": {name: sha256_file(out / name) for name in MIXED},
        },
    )
    digest = mark_complete(out, stage="mix", key=key)
    return DatasetRef(path=str(out), sha256=digest)


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
