"""Memory stays bounded by a chunk, not by the export, on shapes the benchmark does not make.

Deterministic stand-ins for the scaling probes (no timings): the largest piece of state a
reader holds at once, counted, and the output it yields checked against the rules.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from feinschliff.ingest import langfuse
from feinschliff.ingest.detect import open_export
from feinschliff.ingest.records import FeedbackRecord, ReadLog
from feinschliff.ingest.scratch import Scratch
from feinschliff.specs.feedback import DerivationRules

ROOT = Path(__file__).resolve().parents[2]
TRACE = "t" * 32


def _generation(i: int) -> dict:
    return {
        "id": f"obs-{i:04d}",
        "traceId": TRACE,
        "type": "GENERATION",
        "startTime": f"2026-10-01T00:{i // 60:02d}:{i % 60:02d}Z",
        "input": json.dumps([{"role": "user", "content": f"Frage Nummer {i}"}]),
        "output": json.dumps({"role": "assistant", "content": f"Antwort Nummer {i}"}),
    }


def _trace_export(folder: Path, n: int) -> Path:
    """One trace of ``n`` generations (pages written out of time order) and one thumbs-up
    on the trace (it belongs to the trace's last generation)."""
    folder.mkdir()
    rows = [_generation(i) for i in reversed(range(n))]
    (folder / "observations.json").write_text(json.dumps({"data": rows, "meta": {}}))
    score = {
        "id": "s1",
        "name": "user-feedback",
        "dataType": "BOOLEAN",
        "value": True,
        "timestamp": "2026-10-02T00:00:00Z",
        "subject": {"kind": "trace", "id": TRACE},
    }
    (folder / "scores.json").write_text(json.dumps({"data": [score], "meta": {}}))
    return folder


@pytest.mark.parametrize("n", [9, 10, 11])  # a last chunk that is full, short, a single row
def test_a_long_trace_waits_for_its_trace_score_a_chunk_at_a_time(tmp_path, monkeypatch, n):
    """An agent trace can hold 100k generations; with a trace-level score they all wait in
    the scratch database. They come back a chunk at a time (each lookup asks for at most a
    chunk of ids), and only the trace's last generation gets the trace's score."""
    monkeypatch.setattr(langfuse, "CHUNK", 3)
    asked: list[int] = []
    lookup = langfuse._Join._lookup

    def counted(self, column, keys, ids_only=False):
        asked.append(len(keys))
        return lookup(self, column, keys, ids_only)

    monkeypatch.setattr(langfuse._Join, "_lookup", counted)
    log = ReadLog()
    with Scratch(tmp_path) as scratch:
        read = open_export("langfuse", _trace_export(tmp_path / "x", n), log, _rules(), scratch)
        items = list(read.items)

    assert max(asked) <= 3
    assert [(i.observation_id, [v.kind for v in i.votes]) for i in items] == [
        (f"obs-{n - 1:04d}", ["thumbs"])
    ]
    assert log.stats["langfuse_generation_without_feedback"] == n - 1


def test_a_pull_mirror_remembers_its_record_ids_on_disk(tmp_path):
    """A pull mirror keeps the newest copy of each record; the ids read so far live in the
    scratch database, not in a set that grows with the mirror (~80 MB per million ids)."""
    sample = ROOT / "data" / "samples" / "argilla" / "feedback-de"
    mirror = tmp_path / "mirror"
    shutil.copytree(sample / ".argilla", mirror / ".argilla")
    records = json.loads((sample / "records.json").read_text())
    older = "".join(json.dumps(r) + "\n" for r in records)
    (mirror / "records-20261101T000000Z.jsonl").write_text(older)
    (mirror / "records-20261108T000000Z.jsonl").write_text(json.dumps(records[3]) + "\n")
    log = ReadLog()
    with Scratch(tmp_path) as scratch:
        items = list(open_export("argilla", mirror, log, _rules(), scratch).items)
        tables = [
            name
            for (name,) in scratch.db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        stored = [
            scratch.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in tables
            if t.startswith("argilla_seen")
        ]

    assert stored == [len(records)]
    ids = [i.source_id for i in items if isinstance(i, FeedbackRecord)]
    assert sorted(ids) == sorted(r["id"] for r in records)
    assert ids[0] == records[3]["id"]  # the newest pull first
    assert log.stats["argilla_record_superseded_by_newer_pull"] == 1


def _rules() -> DerivationRules:
    return DerivationRules()


def test_a_large_api_page_is_streamed_with_the_rows_a_whole_read_gives(tmp_path, monkeypatch):
    """A whole export saved as one ``{"data": [...]}`` page was parsed at once (~3x its size
    in memory). A page over ``STREAM_PAGE_BYTES`` is streamed instead, with the same rows and
    locations: members before ``data`` (meta), CRLF line ends and a row with a lone
    surrogate (quarantined alone, as before) included."""
    from feinschliff.ingest import langfuse_rows

    rows = [_generation(i) for i in range(5)]
    rows[2]["name"] = "kaputt \ud83d"  # json.dumps escapes it: a lone surrogate in the page
    body = ",\r\n  ".join(json.dumps(r) for r in rows)
    text = '{"meta": {"page": 1, "data": "x"},\r\n "data": [\r\n  ' + body + "\r\n ]}\r\n"
    page = tmp_path / "observations.json"
    page.write_text(text, newline="")
    whole = list(langfuse_rows.iter_rows(page, ReadLog()))
    monkeypatch.setattr(langfuse_rows, "STREAM_PAGE_BYTES", 0)
    monkeypatch.setattr(langfuse_rows, "read_json", _not_whole)
    log = ReadLog()

    streamed = list(langfuse_rows.iter_rows(page, log))

    assert streamed == whole
    assert [w for w, _ in streamed] == [f"{page}#data[{i}]" for i in range(5)]
    assert isinstance(streamed[2][1], langfuse_rows.Broken)
    assert log.inputs[str(page)]  # fingerprinted from the streamed bytes


def _not_whole(*_args):
    raise AssertionError("the page was read whole")


def test_near_dup_candidates_are_listed_a_slice_at_a_time(tmp_path, monkeypatch):
    """Rows sharing a long context share LSH band keys without being near-duplicates: every
    later row has a candidate per earlier row. Candidate pairs are listed at most
    ``EXPAND_PAIRS`` at a time (they grew with the index, ~500 MB at 20k such rows), and the
    verdicts equal those of listing them all at once."""
    import numpy as np

    from feinschliff.ingest import dedup
    from feinschliff.specs.feedback import DedupSpec

    rng = np.random.default_rng(3)
    context = " ".join(f"w{k}" for k in rng.integers(0, 10**6, 300))
    texts = [
        f"{context} " + " ".join(f"q{k}" for k in rng.integers(0, 10**6, 40)) for _ in range(300)
    ]
    texts += texts[::7]  # exact repeats: near-duplicates to find

    def verdicts(expand: int) -> tuple[list[bool], int]:
        monkeypatch.setattr(dedup, "EXPAND_PAIRS", expand)
        listed: list[int] = []
        verify = dedup.Deduplicator._verify

        def counted(self, sigs, pairs, need, dup):
            listed.append(len(pairs))
            return verify(self, sigs, pairs, need, dup)

        monkeypatch.setattr(dedup.Deduplicator, "_verify", counted)
        with Scratch(tmp_path) as scratch:
            index = dedup.Deduplicator(DedupSpec(), scratch)
            out = []
            for lo in range(0, len(texts), 50):
                out += index.near_dups([("sft", t) for t in texts[lo : lo + 50]])
            index.close()
        return out, max(listed)

    whole, most = verdicts(1 << 40)
    sliced, at_once = verdicts(64)

    assert most > 64 and at_once <= 64  # popular band keys: many pairs, listed in slices
    assert sliced == whole
    assert sum(whole[300:]) > len(texts[::7]) // 2  # the repeats are found (most: a row
    # flagged by the Jaccard estimate is not indexed, so its repeat may go unmatched)
