"""Langfuse observation files read in worker processes give the one-process result, byte for byte."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from feinschliff.ingest import langfuse_parallel, run_ingest
from feinschliff.recipe import FeedbackSpec


def _obs(i: int, trace: str | None = None, **extra) -> dict:
    return {
        "id": f"o{i}",
        "traceId": trace or f"t{i}",
        "type": "GENERATION",
        "startTime": f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z",
        "input": json.dumps([{"role": "user", "content": f"Frage {i} zum Tarif {i * 7}?"}]),
        "output": json.dumps({"role": "assistant", "content": f"Antwort {i}: {i} Euro."}),
        **extra,
    }


def _score(sid: str, subject: dict, value: object = True, kind: str = "BOOLEAN") -> dict:
    return {
        "id": sid,
        "name": "user-feedback",
        "dataType": kind,
        "value": value,
        "subject": subject,
    }


def _export(folder: Path) -> None:
    """Three pages plus a JSONL file that also holds a score; overlaps, trace-level scores,
    junk, a non-generation, a broken generation and an orphan score."""
    pages = [[_obs(i) for i in range(p * 40, p * 40 + 45)] for p in range(3)]  # 5 overlap
    pages[0].append({"unrelated": True})
    pages[1].append({**_obs(500), "type": "SPAN"})
    pages[1].append({**_obs(501), "input": 42})
    pages[2] += [_obs(600, trace="shared"), _obs(601, trace="shared")]
    scores = [
        _score(f"s{i}", {"kind": "observation", "id": f"o{i}"}, i % 3 != 0) for i in range(125)
    ]
    scores += [
        _score("s501", {"kind": "observation", "id": "o501"}),
        _score("tr", {"kind": "trace", "id": "shared"}),
        _score("c7", {"kind": "observation", "id": "o7"}, "Korrigierte Antwort 7.", "CORRECTION"),
        _score("n1", {"kind": "observation", "id": "o1"}, 0.4, "NUMERIC"),
        _score("orphan", {"kind": "observation", "id": "nowhere"}),
    ]
    folder.mkdir()
    (folder / "scores.json").write_text(json.dumps({"data": scores, "meta": {}}))
    for n, page in enumerate(pages):
        (folder / f"obs-{n}.json").write_text(json.dumps({"data": page, "meta": {}}))
    mixed = [_obs(700), _score("s700", {"kind": "observation", "id": "o700"}), _obs(701)]
    (folder / "obs-9-mixed.jsonl").write_text("\n".join(json.dumps(r) for r in mixed) + "\n")


def _spec(folder: Path, workers: int) -> FeedbackSpec:
    return FeedbackSpec.model_validate(
        {
            "sources": [{"kind": "langfuse", "path": str(folder)}],
            "pii": {"mode": "off"},
            "heldout_fraction": 0.2,
            "max_quarantine_fraction": 1.0,
            "workers": workers,
        }
    )


def read_both_ways(
    spec_for: Callable[[int], FeedbackSpec], tmp: Path, monkeypatch
) -> tuple[list[tuple], list[int]]:
    """Ingest with 1 and 2 workers (every file big enough for a worker): each run's output
    hash, sources, drops and counts, and the rows of each file a worker returned."""
    merged: list[int] = []
    real_merge = langfuse_parallel._merge

    def counting_merge(result, join):
        merged.append(len(result.entries))
        return real_merge(result, join)

    monkeypatch.setattr(langfuse_parallel, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(langfuse_parallel, "_merge", counting_merge)
    outputs = []
    for workers in (1, 2):
        ref = run_ingest(spec_for(workers), tmp / f"out{workers}")
        manifest = json.loads((tmp / f"out{workers}" / "manifest.json").read_text())
        outputs.append((ref.sha256, manifest["sources"], manifest["drops"], manifest["counts"]))
    return outputs, merged


def test_parallel_read_equals_one_process_read(tmp_path, monkeypatch):
    _export(tmp_path / "lf")
    outputs, merged = read_both_ways(lambda w: _spec(tmp_path / "lf", w), tmp_path, monkeypatch)
    assert merged == [46, 46, 47]  # the three pages went through workers, the mixed file not
    assert outputs[0] == outputs[1]
    skipped = outputs[0][1][0]["skipped"]
    assert skipped["langfuse_observation_seen_twice"] == 10
    assert skipped["langfuse_not_a_generation"] == 1
    assert outputs[0][1][0]["quarantined"] == 3  # junk row, broken generation, orphan score


def test_files_too_large_for_a_worker_are_streamed_in_the_parent_in_order(tmp_path, monkeypatch):
    """A worker returns a whole file at once; files over WORKER_MAX_BYTES stay in the parent
    (streamed in chunks), in their place in the order, and the output does not change."""
    lf = tmp_path / "lf"
    _export(lf)
    small = [lf / name for name in ("obs-0.json", "obs-2.json", "obs-9-mixed.jsonl")]
    limit = max(f.stat().st_size for f in small)
    for name in ("scores.json", "obs-1.json"):  # the same JSON, indented past the limit
        path = lf / name
        path.write_text(json.dumps(json.loads(path.read_text()), indent=24))
        assert path.stat().st_size > limit
    monkeypatch.setattr(langfuse_parallel, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(langfuse_parallel, "WORKER_MAX_BYTES", limit)
    sent: list[str] = []  # files offered to the worker pool
    real_scores = langfuse_parallel.store_scores

    def spy_store_scores(files, join, submit):
        def spying_submit(fn, path, *args):
            sent.append(path.name)
            return submit(fn, path, *args)

        return real_scores(files, join, spying_submit)

    def spy_read(files, join, scores, submit):
        def spying_submit(fn, path, *args):
            sent.append(path.name)
            return submit(fn, path, *args)

        return real_read(files, join, scores, spying_submit)

    real_read = langfuse_parallel.read_in_workers
    monkeypatch.setattr(langfuse_parallel, "store_scores", spy_store_scores)
    monkeypatch.setattr(langfuse_parallel, "read_in_workers", spy_read)
    outputs = []
    for workers in (1, 2):
        sent.clear()
        spec = _spec(tmp_path / "lf", workers)
        out = tmp_path / f"out{workers}"
        ref = run_ingest(spec, out)
        manifest = json.loads((out / "manifest.json").read_text())
        outputs.append((ref.sha256, manifest["sources"], manifest["drops"], manifest["counts"]))
    # with two workers: never the large files (the mixed file comes back and is read here)
    assert sent == ["obs-0.json", "obs-2.json", "obs-9-mixed.jsonl"]
    assert outputs[0] == outputs[1]
