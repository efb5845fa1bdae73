"""Langfuse scores that cannot be used: a malformed one is quarantined alone (the generation's
other votes still count), and a score without its generation is quarantined only when it
carried training signal (thumbs, correction); judge or eval scores on spans are counted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from feinschliff.ingest import run_ingest
from tests.unit.test_ingest import LANGFUSE, read_jsonl, spec


def _first_generation() -> dict:
    page = json.loads((LANGFUSE / "observations-page-1.json").read_text())
    return next(o for o in page["data"] if o["type"] == "GENERATION")


def _score(sid: str, obs: str, trace: str, kind: str = "BOOLEAN", value: object = True) -> dict:
    return {
        "id": sid,
        "name": "user-feedback" if kind == "BOOLEAN" else "review",
        "dataType": kind,
        "value": value,
        "timestamp": "2026-10-22T09:00:00.000Z",
        "subject": {"kind": "observation", "id": obs, "traceId": trace},
    }


def _content(path: Path) -> list[dict]:
    """Rows without provenance (its locations name the folder read)."""
    return [{k: v for k, v in r.items() if k != "provenance"} for r in read_jsonl(path)]


def _with_scores(tmp_path: Path, scores: list[dict]) -> Path:
    src = tmp_path / "src"
    shutil.copytree(LANGFUSE, src)
    (src / "scores-extra.json").write_text(json.dumps({"data": scores, "meta": {}}))
    return src


def test_a_malformed_score_is_quarantined_alone(tmp_path):
    gen = _first_generation()
    scores = [_score("empty-fix", gen["id"], gen["traceId"], "CORRECTION", "  ")]
    src = _with_scores(tmp_path, scores)
    base = tmp_path / "base"
    run_ingest(spec(("langfuse", LANGFUSE)), base)
    out = tmp_path / "out"

    run_ingest(spec(("langfuse", src), max_quarantine_fraction=0.5), out)

    quarantined = read_jsonl(out / "quarantine.jsonl")
    assert [q["raw"]["id"] for q in quarantined] == ["empty-fix"]
    assert quarantined[0]["reason"] == "CORRECTION score has no text"  # a fixed drop key
    assert "empty-fix" in quarantined[0]["detail"]
    assert quarantined[0]["location"].endswith("scores-extra.json#data[0]")  # the score's own
    for name in ("sft", "kto", "preference"):  # the generation's own votes still count
        assert _content(out / f"{name}.jsonl") == _content(base / f"{name}.jsonl")


def test_orphan_scores_without_training_signal_are_counted_not_quarantined(tmp_path):
    gen = _first_generation()
    span = gen.get("parentObservationId") or "span-1"
    scores = [_score(f"eval-{i}", span, gen["traceId"], "NUMERIC", 0.8) for i in range(3)]
    scores.append(_score("thumbs-lost", "nowhere", "t-lost"))
    out = tmp_path / "out"

    run_ingest(spec(("langfuse", _with_scores(tmp_path, scores))), out)

    quarantined = read_jsonl(out / "quarantine.jsonl")
    assert [q["raw"]["id"] for q in quarantined] == ["thumbs-lost"]  # thumbs: training signal
    drops = json.loads((out / "manifest.json").read_text())["drops"]
    assert drops["langfuse_score_NUMERIC_without_generation"] == 3


def test_worker_processes_quarantine_a_malformed_score_once(tmp_path, monkeypatch):
    """The same in worker processes, on an export whose pages overlap: the score belongs to an
    observation on two pages, whose second copy is dropped as seen twice with everything it
    carries; the output equals the one-process read."""
    from feinschliff.ingest import langfuse_parallel
    from tests.unit.test_ingest_parallel import _export, _score, _spec

    lf = tmp_path / "lf"
    _export(lf)
    bad = _score("bad-fix", {"kind": "observation", "id": "o42"}, "  ", "CORRECTION")
    (lf / "scores-bad.json").write_text(json.dumps({"data": [bad], "meta": {}}))
    monkeypatch.setattr(langfuse_parallel, "PARALLEL_MIN_BYTES", 0)
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        ref = run_ingest(_spec(lf, workers), out)
        reasons = [q["raw"].get("id") for q in read_jsonl(out / "quarantine.jsonl")]
        outputs.append((ref.sha256, reasons))
    assert outputs[0] == outputs[1]
    assert outputs[0][1].count("bad-fix") == 1
