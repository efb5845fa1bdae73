"""Mix a generate output into an ingest output: one training dataset in ingest's contract.

``sft.jsonl`` and ``preference.jsonl`` hold both sources, each scaled by its weight in the
recipe's ``generate.mix``: weight 2 repeats every row twice, 0.5 keeps exactly half of the rows
(half rounded up: floor(0.5 x n + 0.5), the first in the order of a hash of each row, so reruns
pick the same rows), 0 drops the source; a weight above 0 keeps at least one row of a source
that has any. ``kto.jsonl`` holds the feedback's KTO rows as training reads them from the ingest
output (``train.data.kto_rows``: its thumbs verdicts, and its unpaired preference pairs where
those are not of both labels) weighted by ``mix.feedback``, plus both answers of each synthetic
pair in the mixed ``preference.jsonl`` (chosen: label true, rejected: false; their provenance
says ``source: generate``). Everything else of the ingest output (``heldout/``,
``quarantine.jsonl``) is copied unchanged: synthetic rows never enter the evaluation split.
``manifest.json`` records both input refs, the weights and the counts per source. A run holds
its output (``outlock``): a second one on the same folder is refused (``OutputBusy``), and one
that is, holds or lies inside either input is refused before anything is written
(``OutputInUse``).
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
from feinschliff.generate.outlock import hold_output, refuse_overlap
from feinschliff.specs.generate import MixSpec
from feinschliff.train.data import COLUMNS, kto_from_preferences, kto_rows

MIXED = ("sft.jsonl", "preference.jsonl")
KTO = "kto.jsonl"
# in the key: outputs of the former per-row coin flip ("exact-share") and of round()'s banker's
# rounding ("exact-share": 1 row at 0.5 kept none, 3 rows kept 2) are not reused
SELECTION = "exact-share-half-up"
# in the key: a mix made before kto.jsonl mixed the synthetic pairs in (a copy of the
# feedback's) is made again, not reused
KTO_RULE = "kto-feedback-and-synthetic-pairs"


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
        OutputInUse: ``out`` is, holds or lies inside ``feedback`` or ``generated``.
    """
    refuse_overlap("--mixed-out", out, {"--feedback": feedback.dir, "--out": generated.dir})
    key = input_key(
        "mix",
        SELECTION,
        KTO_RULE,
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
    synthetic: dict[str, list[dict[str, Any]]] = {}
    for name in MIXED:
        fb = _read(feedback.dir / name)
        gen = _read(generated.dir / name)
        synthetic[name] = weighted(gen, mix.synthetic, f"synthetic:{name}")
        rows = weighted(fb, mix.feedback, f"feedback:{name}") + synthetic[name]
        counts[name] = {"feedback": len(fb), "synthetic": len(gen), "mixed": len(rows)}
        _write(out / name, rows)
    counts[KTO] = _mix_kto(feedback, generated, mix, synthetic["preference.jsonl"], out / KTO)
    copied = []
    for name in ("heldout", "quarantine.jsonl"):
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
            "sha256": {name: sha256_file(out / name) for name in (*MIXED, KTO)},
        },
    )
    digest = mark_complete(out, stage="mix", key=key)
    return DatasetRef(path=str(out), sha256=digest)


def _mix_kto(
    feedback: DatasetRef,
    generated: DatasetRef,
    mix: MixSpec,
    picked_pairs: list[dict[str, Any]],
    path: Path,
) -> dict[str, int]:
    """Write the mix's KTO rows to ``path``; their counts per source.

    Not a copy of the feedback's ``kto.jsonl``: that has rows whenever the feedback has
    thumbs, and training then never reads the pairs, so KTO trained on the feedback alone. The
    synthetic rows unpair the very pairs the mixed ``preference.jsonl`` kept (a pair's two
    answers stay together, so both labels come in equal numbers)."""
    fb = kto_rows(_read(feedback.dir / KTO), _read(feedback.dir / "preference.jsonl"))
    gen = _pairs(_read(generated.dir / "preference.jsonl"))
    rows = weighted(fb, mix.feedback, f"feedback:{KTO}") + kto_from_preferences(
        _pairs(picked_pairs)
    )
    _write(path, rows)
    return {"feedback": len(fb), "synthetic": 2 * len(gen), "mixed": len(rows)}


def _pairs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if all(c in r for c in COLUMNS["dpo"])]


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
