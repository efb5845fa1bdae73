"""The ingest's own indexes and fast paths: spilled multimap, record file, dedup against a
row-by-row reference, memoised row keys, pydantic construction without validation."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

from feinschliff.ingest import spillmap
from feinschliff.ingest.dedup import (
    Deduplicator,
    MinHasher,
    RowKeys,
    content_key,
    normalize,
    word_hashes,
)
from feinschliff.ingest.jsonio import dumps
from feinschliff.ingest.records import FeedbackRecord, Message, Vote, construct
from feinschliff.ingest.scratch import Scratch
from feinschliff.ingest.spillmap import BLOCK, RecordFile, SpillMap
from feinschliff.specs.feedback import DedupSpec


def _pairs(found: tuple[np.ndarray, np.ndarray]) -> list[tuple[int, int]]:
    return sorted(zip(found[0].tolist(), found[1].tolist(), strict=True))


def test_spill_map_equals_a_dict_while_spilling_and_merging(tmp_path, monkeypatch):
    """Tiny memory: pairs go to disk runs and runs get merged (a few pairs at a time); every
    lookup still returns exactly the stored pairs (popular keys span several disk blocks)."""
    monkeypatch.setattr(spillmap, "MERGE_CHUNK", 50)
    rng = np.random.default_rng(1)
    index = SpillMap(tmp_path, "t", memory_entries=300)
    reference: dict[int, list[int]] = {}
    popular = rng.integers(-(2**63), 2**63 - 1, 3, dtype=np.int64)
    for step in range(60):
        keys = np.concatenate(
            [rng.integers(-(2**63), 2**63 - 1, 90, dtype=np.int64), rng.choice(popular, 30)]
        )
        values = rng.integers(0, 2**40, len(keys), dtype=np.int64)
        index.add(keys, values)
        for k, v in zip(keys.tolist(), values.tolist(), strict=True):
            reference.setdefault(k, []).append(v)
        stored = np.array(list(reference), dtype=np.int64)
        asked = np.unique(np.concatenate([rng.choice(stored, 50), popular, [-(2**63), 2**63 - 1]]))
        want = sorted((k, v) for k in asked.tolist() for v in reference.get(k, ()))
        assert _pairs(index.lookup(asked)) == want, step
        assert sum(len(k) for k, _ in index.levels) < 300
        assert len(index.runs) <= np.log2(max(len(index) / 300, 1)) + 1  # runs get merged
    assert len(index) == sum(len(v) for v in reference.values())
    assert max(len(v) for v in reference.values()) > 2 * BLOCK  # a key over several blocks
    assert len(list(tmp_path.iterdir())) == len(index.runs) > 0
    index.close()
    assert not list(tmp_path.iterdir())


def test_spill_map_lookup_of_nothing(tmp_path):
    index = SpillMap(tmp_path, "t", memory_entries=4)
    assert _pairs(index.lookup(np.array([1, 2], dtype=np.int64))) == []
    index.add(np.array([5, 3, 5, 9, 1], dtype=np.int64), np.arange(5, dtype=np.int64))
    assert index.runs and _pairs(index.lookup(np.array([0, 5, 10], dtype=np.int64))) == [
        (5, 0),
        (5, 2),
    ]


def test_record_file_reads_back_by_number(tmp_path):
    records = RecordFile(tmp_path / "r", 8, cache_records=3)  # slots shared: evictions
    first = records.append(np.arange(6, dtype=np.uint32).reshape(3, 2))
    second = records.append(np.arange(100, 104, dtype=np.uint32).reshape(2, 2))
    assert first.tolist() == [1, 2, 3] and second.tolist() == [4, 5]
    assert records.read([5, 1, 3]).view(np.uint32).tolist() == [[102, 103], [0, 1], [4, 5]]
    want = {1: [0, 1], 2: [2, 3], 3: [4, 5], 4: [100, 101], 5: [102, 103]}
    rng = np.random.default_rng(0)
    for _ in range(50):  # cached or not, always the stored record
        numbers = rng.choice(np.arange(1, 6), int(rng.integers(1, 6)), replace=False)
        got = records.read(numbers).view(np.uint32).tolist()
        assert got == [want[n] for n in numbers.tolist()]
    assert (records.cached > 0).sum() == 3
    with pytest.raises(ValueError):
        records.append(np.zeros((1, 3), dtype=np.uint32))
    records.close()
    assert not (tmp_path / "r").exists()


def _reference_near_dups(dedup: Deduplicator, items: list[tuple[str, str]]) -> list[bool]:
    """Row by row: a duplicate when an earlier kept row shares a band key and enough values."""
    hasher = MinHasher(dedup.spec.num_perm, dedup.spec.shingle_words)
    sigs = hasher.signatures_of_words([word_hashes(t) for _, t in items])
    keys = dedup._band_keys([s for s, _ in items], sigs).tolist()
    need, kept, out = dedup._need(), [], []
    for i in range(len(items)):
        dup = any(set(keys[i]) & set(keys[j]) and (sigs[i] == sigs[j]).sum() >= need for j in kept)
        out.append(dup)
        if not dup:
            kept.append(i)
    return out


def test_dedup_with_spilled_indexes_equals_row_by_row_reference():
    rng = random.Random(4)
    words = [f"wort{i}" for i in range(60)]
    bases = [[rng.choice(words) for _ in range(25)] for _ in range(15)]
    texts = []
    for _ in range(400):
        t = list(rng.choice(bases))
        for _ in range(rng.choice([0, 1, 1, 2, 8])):
            t[rng.randrange(len(t))] = rng.choice(words)
        texts.append((rng.choice(["sft", "sft", "kto:True"]), " ".join(t)))
    keys = [(space, content_key({"t": t}, ("t",))) for space, t in texts]
    with Scratch() as scratch:
        dedup = Deduplicator(DedupSpec(), scratch, memory_entries=64)  # spills early
        near = [d for lo in range(0, 400, 37) for d in dedup.near_dups(texts[lo : lo + 37])]
        exact = [d for lo in range(0, 400, 37) for d in dedup.exact_dups(keys[lo : lo + 37])]
        assert dedup.lsh.runs and any(index.runs for index in dedup.exact.values())
        dedup.close()
    assert near == _reference_near_dups(dedup, texts) and 0 < sum(near) < len(near)
    seen: set[tuple[str, bytes]] = set()
    want = []
    for item in keys:
        want.append(item in seen)
        seen.add(item)
    assert exact == want and 0 < sum(exact) < len(exact)


def test_spill_map_failing_mid_write_leaves_no_open_file_or_run(tmp_path, monkeypatch):
    """A disk-full error while a run is written (spill or merge): the error surfaces, no half
    run stays on disk, and close() releases every file (open fds would hold the disk space)."""
    import os

    monkeypatch.setattr(spillmap, "MERGE_CHUNK", 50)
    real_write, calls = spillmap._RunWriter.write, []

    def failing_write(self, pairs):
        calls.append(len(pairs))
        if len(calls) == FAIL_AT:
            raise OSError(28, "No space left on device")
        return real_write(self, pairs)

    monkeypatch.setattr(spillmap._RunWriter, "write", failing_write)
    for FAIL_AT in (1, 9, 20):  # the first spill; later spills and merges
        calls.clear()
        folder = tmp_path / f"fail{FAIL_AT}"
        folder.mkdir()
        fds = len(os.listdir("/proc/self/fd"))
        index = SpillMap(folder, "t", memory_entries=100)
        with pytest.raises(OSError, match="No space"):
            for step in range(100):
                keys = np.arange(step * 60, step * 60 + 60, dtype=np.int64)
                index.add(keys, keys)
        assert len(calls) == FAIL_AT
        assert all(run.path.exists() for run in index.runs)  # complete runs only
        index.close()
        assert not list(folder.iterdir())
        assert len(os.listdir("/proc/self/fd")) == fds


HOSTILE = [
    "Zählerstand  melden\u00a0bitte",
    "ΟΔΟΣ Σ ΣΑΣ",  # final sigma depends on the neighbours
    "e\u0301 vs \u00e9, \u1100\u1161 Hangul jamo",
    "ﬁnanz ＡＢＣ ½ ㎏",  # NFKC compatibility forms
    'quote " and \\ backslash, \t tab \n newline \u2028 line sep',
    "\u0301 leading combining mark",
    "emoji 🤖 and \x1f control",
    "",
    "   ",
    "Σ",
]


def test_row_keys_equal_the_whole_row_formula():
    rng = random.Random(2)
    keys = RowKeys()
    for _ in range(300):

        def msgs(n: int) -> list[dict[str, str]]:
            return [
                {
                    "role": rng.choice(["user", "assistant"]),
                    "content": rng.choice(HOSTILE) + rng.choice(HOSTILE),
                }
                for _ in range(n)
            ]

        row = {
            "prompt": msgs(rng.randint(1, 3)),
            "completion": msgs(1),
            "label": rng.choice([True, False]),
        }
        fields = ("prompt", "completion", "label")
        assert keys.content_key(row, fields) == content_key(row, fields)
        assert keys.content_key(row, ("prompt",)) == content_key(row, ("prompt",))
        want = f"7:{normalize(dumps(row['prompt']).decode('utf-8'))}".encode()
        assert keys.heldout_hash(7, row["prompt"]) == hashlib.sha256(want).digest()
    assert keys.normalized([{"role": "user", "content": 1}]) == normalize(
        dumps([{"role": "user", "content": 1}]).decode()
    )
    assert keys.normalized([{"a": True}]) != keys.normalized([{"a": 1}])  # no aliasing
    tool_call = [{"role": "assistant", "content": "x", "tool_calls": [{"name": "Ä"}]}]
    assert keys.normalized(tool_call) == normalize(dumps(tool_call).decode())  # unhashable value


def test_construct_equals_model_construct():
    message = {"role": "user", "content": "Hallo"}
    vote = {"kind": "thumbs", "annotator": "u", "answer": "output", "value": True, "timestamp": "t"}
    record = {
        "source": "langfuse",
        "source_id": "o1",
        "location": "f#1",
        "trace_id": None,
        "observation_id": "o1",
        "timestamp": None,
        "prompt": [construct(Message, dict(message))],
        "answers": {"output": "Moin"},
        "votes": [construct(Vote, dict(vote))],
    }
    for cls, values in ((Message, message), (Vote, vote), (FeedbackRecord, record)):
        assert tuple(values) == tuple(cls.model_fields)  # the precondition: every field, in order
        assert not cls.__pydantic_post_init__ and cls.model_config.get("extra") != "allow"
        fast, slow = construct(cls, dict(values)), cls.model_construct(**values)
        assert fast == slow and list(fast.__dict__) == list(slow.__dict__)
        assert fast.model_fields_set == slow.model_fields_set
        assert (fast.__pydantic_extra__, fast.__pydantic_private__) == (
            slow.__pydantic_extra__,
            slow.__pydantic_private__,
        )
        assert fast.model_dump_json() == slow.model_dump_json()
