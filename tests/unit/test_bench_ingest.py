"""bench/ingest.py's same-job baseline does the work it is compared on: a ratio against a
baseline that skipped near-dup removal or decontamination would flatter the stage."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
EVAL_TEXT = (
    "Wie lautet der Nachname des Komponisten der Neunten Sinfonie mit der „Ode an die Freude“?"
)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_ingest", ROOT / "bench" / "ingest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sft(text: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Du bist ein Assistent."},
            {"role": "user", "content": text},
            {"role": "assistant", "content": "Gerne."},
        ]
    }


def test_same_job_baseline_drops_near_duplicates_and_eval_text_per_output() -> None:
    words = [f"wort{i}" for i in range(60)]
    base = " ".join(words)
    near = " ".join([*words[:-1], "anders"])  # one word of 60 changed: Jaccard ~0.97
    sft = pd.DataFrame(
        [_sft(base), _sft(near), _sft("ganz etwas anderes " * 5), _sft(f"Frage: {EVAL_TEXT}")]
    )
    kto = pd.DataFrame([{"prompt": _sft(base)["messages"][:2], "completion": [], "label": True}])

    sft_keep, kto_keep = _bench()._near_dedup_and_decontaminate([sft, kto])

    assert sft_keep == [True, False, True, False]
    assert kto_keep == [True]  # near-dups count within an output, as the stage counts them
