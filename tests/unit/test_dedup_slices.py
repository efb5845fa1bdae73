"""Near-dup candidates are listed a bounded slice at a time, grouped by stored signature.

A band key shared by many stored and many new rows (a long common context) makes a join that
grows with the index; ``join_slices`` lists it a slice at a time, by stored signature number,
so each stored signature is read once per batch. The verdicts equal those of one whole join.
"""

from __future__ import annotations

import numpy as np
import pytest

from feinschliff.ingest import dedup, spillmap
from feinschliff.ingest.scratch import Scratch
from feinschliff.ingest.spillmap import join_slices
from feinschliff.specs.feedback import DedupSpec


def _join(queries: np.ndarray, keys: np.ndarray, values: np.ndarray) -> list[tuple[int, int]]:
    return sorted(
        (i, int(v))
        for i, q in enumerate(queries)
        for k, v in zip(keys, values, strict=True)
        if k == q
    )


@pytest.mark.parametrize("bound", [1, 3, 17, 1 << 40])
def test_join_slices_list_the_whole_join_by_value_within_the_bound(bound):
    """A few popular keys (many stored values, many queries each), keys nobody asked for and
    queries nothing stored matches: every pair once, no slice over the bound, values in
    ascending order (a value's pairs are split over slices only when they alone exceed it)."""
    rng = np.random.default_rng(5)
    stored = {
        (int(k), int(v))
        for k, v in zip(rng.integers(-4, 9, 400), rng.integers(0, 90, 400), strict=True)
    }
    keys, values = (np.array(c, dtype=np.int64) for c in zip(*sorted(stored), strict=True))
    order = rng.permutation(len(keys))  # looked up from levels and runs: any order
    keys, values = keys[order], values[order]
    queries = rng.integers(-6, 6, 60).astype(np.int64)  # -6, -5: nothing stored

    slices = list(join_slices(queries, keys, values, bound))

    listed = sorted(
        (int(i), int(v)) for owner, found in slices for i, v in zip(owner, found, strict=True)
    )
    assert listed == _join(queries, keys, values)
    assert max(len(owner) for owner, _ in slices) <= min(bound, len(listed))
    firsts = [found.min() for _, found in slices]
    lasts = [found.max() for _, found in slices]
    assert all(last <= first for last, first in zip(lasts, firsts[1:], strict=False))


def test_join_slices_of_nothing_list_nothing():
    empty = np.empty(0, dtype=np.int64)
    assert list(join_slices(empty, np.array([1]), np.array([2]), 8)) == []
    assert list(join_slices(np.array([1]), empty, empty, 8)) == []


def _popular_batches(seed: int = 11) -> list[np.ndarray]:
    """Signatures of rows that share most values with one template (so their band keys are
    popular) and differ in 2-24 random places: some near-duplicates, many candidates."""
    rng = np.random.default_rng(seed)
    template = rng.integers(0, 1 << 32, 64, dtype=np.uint32)
    sigs = np.tile(template, (360, 1))
    for row in sigs:
        at = rng.choice(64, int(rng.integers(2, 25)), replace=False)
        row[at] = rng.integers(0, 1 << 32, len(at), dtype=np.uint32)
    return np.split(sigs, 6)  # six batches of 60 rows


def _verdicts(tmp_path, monkeypatch, bound: int) -> tuple[list[bool], list[int], list[int]]:
    """Near-dup verdicts of the popular batches, the pairs verified at a time and how often
    any stored signature was read within one batch."""
    monkeypatch.setattr(dedup, "EXPAND_PAIRS", bound)
    monkeypatch.setattr(dedup, "VERIFY_PAIRS", 1 << 20)  # one read per slice
    listed: list[int] = []
    reads: list[np.ndarray] = []
    verify, read = dedup.Deduplicator._verify, spillmap.RecordFile.read

    def counted_verify(self, sigs, pairs, need, dup):
        listed.append(len(pairs))
        return verify(self, sigs, pairs, need, dup)

    def counted_read(self, numbers):
        reads.append(np.asarray(numbers))
        return read(self, numbers)

    monkeypatch.setattr(dedup.Deduplicator, "_verify", counted_verify)
    monkeypatch.setattr(spillmap.RecordFile, "read", counted_read)
    out, most_reads = [], []
    with Scratch(tmp_path) as scratch:
        index = dedup.Deduplicator(DedupSpec(), scratch, memory_entries=256)  # runs on disk
        for sigs in _popular_batches():
            reads.clear()
            out += index.near_dups_of_batch(["sft"] * len(sigs), sigs)
            counts = np.unique(np.concatenate(reads or [np.empty(0)]), return_counts=True)[1]
            most_reads.append(int(counts.max(initial=0)))
        index.close()
    return out, listed, most_reads


def test_popular_band_keys_are_verified_in_bounded_slices_with_the_same_verdicts(
    tmp_path, monkeypatch
):
    whole, listed_whole, _ = _verdicts(tmp_path, monkeypatch, 1 << 40)
    sliced, listed, _ = _verdicts(tmp_path, monkeypatch, 50)

    assert max(listed_whole) > 1000  # popular keys: many pairs per batch
    assert max(listed) <= 50  # a stored signature's own pairs are cut too (up to 60 x 7)
    assert sliced == whole
    assert 0 < sum(whole) < len(whole)


def test_each_stored_signature_is_read_once_per_batch(tmp_path, monkeypatch):
    """Sliced by stored signature: a candidate of many (row, band) entries is read once per
    batch, not once per slice (a single signature's pairs beyond the bound are the exception,
    which 500 pairs per slice leave out here: 60 rows x 7 bands)."""
    _, listed, most_reads = _verdicts(tmp_path, monkeypatch, 500)

    assert len(listed) > len(most_reads)  # several slices per batch
    assert max(most_reads) == 1
