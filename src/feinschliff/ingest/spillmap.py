"""On-disk indexes with a bounded memory: an int64 multimap in sorted runs, a record file.

The dedup indexes grow with the export (seven LSH band keys and a 256-byte MinHash signature per
kept row, an exact key per row). A SQLite B-tree keeps them on disk but costs a few microseconds
per row to insert and look up; here the work is done in numpy, a batch at a time:

- ``SpillMap``: int64 key -> int64 values. Added pairs go to sorted in-memory levels (merged
  pairwise as they grow, like a binary counter); past ``memory_entries`` pairs they are written
  to disk as one sorted run, of which only every ``BLOCK``-th key stays in memory. A lookup
  searches the levels with ``searchsorted`` and reads from each run only the blocks that can
  hold the key (``os.pread``). Runs are merged pairwise as they accumulate (streamed, a chunk
  at a time), so there are few. Memory is therefore bounded by ``memory_entries`` plus one
  8-byte fence per 256 stored pairs (~0.2 MiB at the 7M LSH pairs of a 1M export).
- ``RecordFile``: fixed-size records appended to a file, numbered from 1, read back by number
  with ``os.pread`` (only near-dup candidates are read back; a small direct-mapped cache keeps
  the ones read before, since popular texts are candidates again and again).
- ``join_slices``: the pairs of queried keys with looked-up (key, value) pairs, a bounded slice
  at a time and grouped by value, so that each value's record is read once per batch.

The ingest looks keys up behind a Bloom filter (``bloom.py``), so most keys never reach here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

PAIR = np.dtype([("k", "<i8"), ("v", "<i8")])
BLOCK = 256  # pairs per disk block (4 KiB): one fence key per block stays in memory
MERGE_CHUNK = 1 << 14  # pairs read per run at a time while merging runs (256 KiB)
LOOKUP_SLICE = 256  # queries looked up in a run at a time: ~2 MiB of blocks read (more
# only when one key fills many blocks, e.g. an LSH band shared by many templated rows)


def _merge(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]):
    """Two sorted (keys, values) levels as one sorted level (no full sort: b's positions in a)."""
    at = np.searchsorted(a[0], b[0], side="right") + np.arange(len(b[0]))
    keep = np.ones(len(a[0]) + len(b[0]), dtype=bool)
    keep[at] = False
    out = []
    for x, y in zip(a, b, strict=True):
        merged = np.empty(len(keep), dtype=np.int64)
        merged[at], merged[keep] = y, x
        out.append(merged)
    return out[0], out[1]


def expand_ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, position) for every position in the half-open ranges ``lo[i]:hi[i]``."""
    counts = hi - lo
    owner = np.repeat(np.arange(len(lo)), counts)
    starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    return owner, starts + np.arange(len(owner))


def join_slices(queries: np.ndarray, keys: np.ndarray, values: np.ndarray, bound: int):
    """Every (i, v) with ``queries[i] == k`` for a stored pair (k, v), as (i's, v's) arrays of at
    most ``bound`` pairs (values in [0, 2**32); a repeated query or stored pair repeats its
    pairs). Slices are cut by value, in ascending order: all pairs of a value come in one slice
    unless that value alone makes more than ``bound`` (then it is cut by query). Memory holds
    the stored pairs and one slice, not the join, which a key shared by many stored and many
    queried rows makes quadratic."""
    asked, query_rank = np.unique(queries, return_inverse=True)
    rank = np.minimum(np.searchsorted(asked, keys), max(len(asked) - 1, 0))
    joined = (asked[rank] == keys) if len(asked) else np.zeros(len(keys), dtype=bool)
    rank, values = rank[joined].astype(np.int64), values[joined].astype(np.int64)
    if not len(values):
        return
    # ordered by (key, value): a query's pairs within a range of values are contiguous
    stored = np.sort(rank << 32 | values)
    base = query_rank.astype(np.int64) << 32
    # pairs each value makes: one per stored pair of it and query of that pair's key
    numbers, of_value = np.unique(values, return_inverse=True)
    per_key = np.bincount(query_rank, minlength=len(asked))
    ends = np.cumsum(np.bincount(of_value, weights=per_key[rank], minlength=len(numbers)))
    start = 0
    while start < len(numbers):
        done = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, done + bound, "right")))
        lo = np.searchsorted(stored, base | numbers[start], "left")
        hi = np.searchsorted(stored, base | numbers[stop - 1], "right")
        yield from _by_query(lo, hi, stored, bound)
        start = stop


def _by_query(lo: np.ndarray, hi: np.ndarray, stored: np.ndarray, bound: int):
    """``join_slices``' slice ``stored[lo[i]:hi[i]]`` per query i, ``bound`` pairs at a time."""
    first, ends = 0, np.cumsum(hi - lo)
    while first < len(lo):
        done = ends[first - 1] if first else 0
        last = max(first + 1, int(np.searchsorted(ends, done + bound, "right")))
        owner, at = expand_ranges(lo[first:last], hi[first:last])
        if len(at):
            yield owner + first, stored[at] & 0xFFFFFFFF
        first = last


class _Run:
    """One sorted run on disk: PAIR records, and the first key of every block in memory."""

    def __init__(self, path: Path, fences: np.ndarray, size: int):
        self.path, self.fences, self.size = path, fences, size
        self.fd = os.open(path, os.O_RDONLY)

    def lookup(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(key, value) of the stored pairs with these keys (sorted), a slice of queries at a
        time (bounded reads)."""
        found = [
            self._lookup(queries[lo : lo + LOOKUP_SLICE])
            for lo in range(0, len(queries), LOOKUP_SLICE)
        ]
        if not found:
            return queries, queries.copy()
        return np.concatenate([k for k, _ in found]), np.concatenate([v for _, v in found])

    def _lookup(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reads the blocks that may hold the keys (one read per stretch of adjacent blocks)
        and searches them at once: a run's blocks, in order, are sorted, and all pairs of a key
        lie in the blocks between its fences."""
        first = np.maximum(np.searchsorted(self.fences, queries, side="left") - 1, 0)
        last = np.searchsorted(self.fences, queries, side="right") - 1
        inside = last >= 0  # else smaller than every key
        queries, first, last = queries[inside], first[inside], last[inside]
        if not len(queries):
            return queries, queries.copy()
        _, blocks = expand_ranges(first, last + 1)
        blocks = np.unique(blocks)
        cuts = np.flatnonzero(np.diff(blocks) != 1)  # runs of adjacent blocks, their ends
        size = BLOCK * PAIR.itemsize
        firsts = blocks[np.concatenate([[0], cuts + 1])] * size
        lengths = blocks[np.concatenate([cuts, [-1]])] * size + size - firsts
        fd = self.fd  # plain ints: thousands of small reads per batch (np.split cost more)
        raw = b"".join(
            [os.pread(fd, n, at) for n, at in zip(lengths.tolist(), firsts.tolist(), strict=True)]
        )
        pairs = np.frombuffer(raw, dtype=PAIR)
        owner, at = expand_ranges(
            np.searchsorted(pairs["k"], queries, side="left"),
            np.searchsorted(pairs["k"], queries, side="right"),
        )
        return queries[owner], pairs["v"][at]

    def chunks(self):
        """The run's pairs in order, ``MERGE_CHUNK`` at a time."""
        for start in range(0, self.size, MERGE_CHUNK):
            n = min(MERGE_CHUNK, self.size - start)
            raw = os.pread(self.fd, n * PAIR.itemsize, start * PAIR.itemsize)
            yield np.frombuffer(raw, dtype=PAIR)

    def delete(self) -> None:
        os.close(self.fd)
        self.path.unlink(missing_ok=True)


class _RunWriter:
    """Writes sorted PAIR chunks to a new run file, collecting the fence keys."""

    def __init__(self, path: Path):
        self.path, self.size = path, 0
        self.f = path.open("wb")
        self.fences: list[np.ndarray] = []

    def write(self, pairs: np.ndarray) -> None:
        offset = (-self.size) % BLOCK  # the first block start inside this chunk
        self.fences.append(pairs["k"][offset::BLOCK].copy())
        pairs.tofile(self.f)
        self.size += len(pairs)

    def close(self) -> _Run:
        self.f.close()
        fences = np.concatenate(self.fences) if self.fences else np.empty(0, dtype=np.int64)
        return _Run(self.path, fences, self.size)

    def abort(self) -> None:
        """A write failed (disk full, interrupt): no half run left open or on disk."""
        self.f.close()
        self.path.unlink(missing_ok=True)


class SpillMap:
    """int64 key -> int64 values (a multimap), in memory up to a bound, then on disk."""

    def __init__(self, directory: Path, name: str, memory_entries: int = 1 << 18):
        self.dir, self.name, self.memory_entries = directory, name, memory_entries
        self.levels: list[tuple[np.ndarray, np.ndarray]] = []  # sorted, largest first
        self.runs: list[_Run] = []
        self._files = 0

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        if not len(keys):
            return
        order = np.argsort(keys, kind="stable")
        self.levels.append((keys[order].astype(np.int64), values[order].astype(np.int64)))
        while len(self.levels) > 1 and len(self.levels[-2][0]) <= 2 * len(self.levels[-1][0]):
            b = self.levels.pop()
            self.levels[-1] = _merge(self.levels[-1], b)
        if sum(len(k) for k, _ in self.levels) >= self.memory_entries:
            self._spill()

    def lookup(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(key, value) of every stored pair whose key is among ``queries`` (sorted, unique)."""
        keys, values = [], []
        for level_keys, level_values in self.levels:
            lo = np.searchsorted(level_keys, queries, side="left")
            hi = np.searchsorted(level_keys, queries, side="right")
            owner, at = expand_ranges(lo, hi)
            keys.append(queries[owner])
            values.append(level_values[at])
        for run in self.runs:
            k, v = run.lookup(queries)
            keys.append(k)
            values.append(v)
        if not keys:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        return np.concatenate(keys), np.concatenate(values)

    def __len__(self) -> int:
        return sum(len(k) for k, _ in self.levels) + sum(r.size for r in self.runs)

    def close(self) -> None:
        for run in self.runs:
            run.delete()
        self.runs, self.levels = [], []

    def _path(self) -> Path:
        self._files += 1
        return self.dir / f"{self.name}.{self._files}.run"

    def _spill(self) -> None:
        """Memory levels -> one run on disk; too many runs -> one merged run."""
        while len(self.levels) > 1:
            b = self.levels.pop()
            self.levels[-1] = _merge(self.levels[-1], b)
        keys, values = self.levels.pop()
        writer = _RunWriter(self._path())
        try:
            for lo in range(0, len(keys), MERGE_CHUNK):  # a chunk at a time: no second copy
                pairs = np.empty(min(MERGE_CHUNK, len(keys) - lo), dtype=PAIR)
                pairs["k"], pairs["v"] = keys[lo : lo + len(pairs)], values[lo : lo + len(pairs)]
                writer.write(pairs)
        except BaseException:
            writer.abort()
            raise
        self.runs.append(writer.close())
        # like the levels: merge the newest two while the older is at most twice the newer,
        # so there are O(log(pairs / memory)) runs and each pair is rewritten as often
        while len(self.runs) > 1 and self.runs[-2].size <= 2 * self.runs[-1].size:
            self._merge_runs(2)

    def _merge_runs(self, n: int) -> None:
        """The newest ``n`` runs -> one, streamed: memory holds one chunk per run. The merged
        runs stay in ``runs`` (closed by ``close``) until their replacement is complete."""
        merging = self.runs[-n:]
        readers = [run.chunks() for run in merging]
        heads = [next(r, None) for r in readers]
        writer = _RunWriter(self._path())
        try:
            while any(h is not None for h in heads):
                # everything up to the smallest last key of the loaded chunks is final
                bound = min(h["k"][-1] for h in heads if h is not None)
                parts = []
                for i, head in enumerate(heads):
                    if head is None:
                        continue
                    k = int(np.searchsorted(head["k"], bound, side="right"))
                    parts.append(head[:k])
                    rest = head[k:]
                    heads[i] = rest if len(rest) else next(readers[i], None)
                merged = np.concatenate(parts)
                writer.write(merged[np.argsort(merged["k"], kind="stable")])
        except BaseException:
            writer.abort()
            raise
        self.runs[-n:] = [writer.close()]
        for run in merging:
            run.delete()


class RecordFile:
    """Fixed-size records appended to a file and read back by number (1, 2, ...), with a
    direct-mapped cache of records read before (near-dup candidates recur: popular texts)."""

    def __init__(self, path: Path, record_bytes: int, cache_records: int = 1 << 13):
        self.path, self.size = path, record_bytes
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        self.count = 0
        self.cached = np.zeros(cache_records, dtype=np.int64)  # record number per slot, 0: none
        self.cache = np.zeros((cache_records, record_bytes), dtype=np.uint8)

    def append(self, records: np.ndarray) -> np.ndarray:
        """Store ``records`` (one per row, ``record_bytes`` each); returns their numbers."""
        data = memoryview(np.ascontiguousarray(records).tobytes())
        if len(data) != len(records) * self.size:
            raise ValueError(f"records are not {self.size} bytes each")
        while data:
            data = data[os.write(self.fd, data) :]
        first = self.count + 1
        self.count += len(records)
        return np.arange(first, self.count + 1, dtype=np.int64)

    def read(self, numbers: np.ndarray) -> np.ndarray:
        """(len(numbers), record_bytes) uint8: the records with these (unique) numbers."""
        numbers = np.asarray(numbers, dtype=np.int64)
        slots = numbers % len(self.cached)
        out = self.cache[slots]
        missed = np.flatnonzero(self.cached[slots] != numbers)
        if len(missed):
            fd, size = self.fd, self.size
            raw = b"".join(
                [os.pread(fd, size, at) for at in ((numbers[missed] - 1) * size).tolist()]
            )
            out[missed] = np.frombuffer(raw, dtype=np.uint8).reshape(len(missed), self.size)
            # cache them; of numbers sharing a slot, the last one (one writer per slot)
            last = len(missed) - 1 - np.unique(slots[missed][::-1], return_index=True)[1]
            self.cached[slots[missed[last]]] = numbers[missed[last]]
            self.cache[slots[missed[last]]] = out[missed[last]]
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)
