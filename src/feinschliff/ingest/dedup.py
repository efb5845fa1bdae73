"""Exact and near-duplicate removal over training rows, within and across sources.

- **Exact**: sha256 of the row's content (messages, label) with every text normalised
  (Unicode NFKC, case, any run of whitespace incl. newlines and tabs is one space, stripped);
  the first occurrence wins.
- **Near** (MinHash LSH): word shingles of the row's user/assistant text; signatures use
  datasketch's ``affine32`` MinHash (its permutations and its fmix pre-mix), computed for a
  batch of rows at once with numpy; the LSH band/row split is datasketch's optimum for the
  threshold, weighted towards recall. Permutations, pre-mix and band split are re-derived here
  with numpy exactly as datasketch derives them (unit tests compare them with datasketch):
  importing datasketch pulls in scipy, over a second of start-up per run. A candidate from a
  shared band is a duplicate only when the two signatures agree on at least ``threshold`` of
  their values (the Jaccard estimate).

Both indexes live in the scratch directory (``spillmap``: memory stays flat as exports grow).
Deduplication runs on the original text, before PII pseudonymization (whose ciphertexts are
random).
"""

from __future__ import annotations

import hashlib
import unicodedata
import zlib
from typing import Any

import numpy as np

from feinschliff.ingest.bloom import Bloom
from feinschliff.ingest.jsonio import dumps
from feinschliff.ingest.scratch import Scratch
from feinschliff.ingest.spillmap import RecordFile, SpillMap, join_slices
from feinschliff.ngrams import word_hashes
from feinschliff.specs.feedback import DedupSpec

_PAD = np.uint32(0x9E3779B9)  # fills short texts up to one shingle
_GROUP_ROWS = 256
LSH_WEIGHTS = (0.1, 0.9)  # false positive, false negative
VERIFY_PAIRS = 4096  # candidate pairs compared at a time (2 x 1 MiB of signatures)
EXPAND_PAIRS = 1 << 18  # candidate pairs listed at a time (a few MiB of index arrays)


def normalize(text: str) -> str:
    """Case and whitespace do not make a row new (NFKC only for text outside ASCII)."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.lower().split())


def normalized_texts(value: Any) -> Any:
    """``value`` (a row field: messages, a label) with every string normalised, so a newline,
    a tab or a trailing space in a text is whitespace like any other (``normalize`` of the
    serialised JSON saw them as the escapes ``\\n``/``\\t`` and before the closing quote)."""
    if isinstance(value, str):
        return normalize(value)
    if isinstance(value, list):
        return [normalized_texts(v) for v in value]
    if isinstance(value, dict):
        return {k: normalized_texts(v) for k, v in value.items()}
    return value


def content_key(row: dict[str, Any], fields: tuple[str, ...]) -> bytes:
    """16-byte exact-dedup key of a row's normalised content (``provenance`` never takes
    part): sha256 of the JSON of its fields with every text normalised."""
    blob = dumps([normalized_texts(row[f]) for f in fields])
    return hashlib.sha256(blob).digest()[:16]


def heldout_text(value: Any) -> str:
    """``normalize`` of the JSON text of ``value``: what held-out hashes are made of. Frozen:
    a prompt once held out must stay held out (the next training would otherwise see former
    evaluation prompts), so this stays as it was although ``content_key`` changed."""
    return normalize(dumps(value).decode("utf-8"))


MEMO_LIMIT = 1 << 12  # messages remembered per memo (cleared when full: rows share them)


class RowKeys:
    """Exact-dedup keys and held-out hashes of rows, each message normalised once per scheme.

    A record's rows (SFT, preference, KTO, thumbs) share their prompt messages, so the same
    texts were normalised up to seven times per record. ``RowKeys`` normalises each message
    once (memoised) and joins the pieces with the JSON punctuation around them:

    - ``content_key``: the JSON of each message with its texts normalised
      (``normalized_texts``); ``dumps`` of a list is ``[`` + the elements' ``dumps`` joined by
      ``,`` + ``]`` (orjson writes no whitespace; its json fallback writes the same bytes);
    - ``heldout_hash``: ``heldout_text`` of the prompt, i.e. ``normalize`` of its JSON text.
      ``normalize`` (NFKC, ``lower``, whitespace collapsed) works piece by piece when every cut
      lies next to one of ``[]{},"`` on both sides: ASCII punctuation never composes under
      NFKC, is no whitespace, and is neither cased nor case-ignorable, so it also ends the
      context of ``lower``'s final-sigma rule.

    Unit tests compare the keys with ``content_key`` / ``heldout_text`` on hostile Unicode.
    """

    def __init__(self) -> None:
        self._memo: dict[Any, str] = {}  # held-out pieces
        self._content_memo: dict[Any, str] = {}  # exact-dedup pieces

    def normalized(self, value: Any) -> str:
        """``heldout_text(value)`` for a row field: a list is joined from its elements
        (messages), each normalised whole (memoised)."""
        return self._joined(value, self._memo, heldout_text)

    def content(self, value: Any) -> str:
        """``dumps(normalized_texts(value)).decode()``, joined the same way."""
        return self._joined(value, self._content_memo, _content_piece)

    @staticmethod
    def _joined(value: Any, memo: dict[Any, str], piece: Any) -> str:
        if len(memo) >= MEMO_LIMIT:
            memo.clear()
        if type(value) is not list:
            return piece(value)
        parts = []
        for element in value:
            # a message's items as the key: its strings' hashes are cached, unlike dumps' bytes;
            # only all-str messages (True == 1 would alias keys, lists are unhashable)
            items = None
            if type(element) is dict and all(type(v) is str for v in element.values()):
                items = tuple(element.items())
            text = memo.get(items) if items is not None else None
            if text is None:
                text = piece(element)
                if items is not None:
                    memo[items] = text
            parts.append(text)
        return "[" + ",".join(parts) + "]"

    def content_key(self, row: dict[str, Any], fields: tuple[str, ...]) -> bytes:
        """``dedup.content_key(row, fields)``."""
        blob = "[" + ",".join([self.content(row[f]) for f in fields]) + "]"
        return hashlib.sha256(blob.encode("utf-8")).digest()[:16]

    def heldout_hash(self, seed: int, prompt: list[Any]) -> bytes:
        """sha256 of ``f"{seed}:{heldout_text(prompt)}"`` (``prepare._heldout``)."""
        return hashlib.sha256(f"{seed}:{self.normalized(prompt)}".encode()).digest()


def _content_piece(value: Any) -> str:
    if type(value) is dict and all(type(v) is str for v in value.values()):  # a message: fast
        return dumps({k: normalize(v) for k, v in value.items()}).decode("utf-8")
    return dumps(normalized_texts(value)).decode("utf-8")


def affine32_permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``MinHash(num_perm, seed, scheme="affine32").permutations`` (datasketch 2.x)."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def fmix32(hv: np.ndarray) -> np.ndarray:
    """datasketch's 32-bit MurmurHash3 finalizer pre-mix (``minhash._fmix(hv, 32)``)."""
    hv = hv ^ (hv >> np.uint32(16))
    hv = hv * np.uint32(0x85EBCA6B)
    hv = hv ^ (hv >> np.uint32(13))
    hv = hv * np.uint32(0xC2B2AE35)
    return hv ^ (hv >> np.uint32(16))


def lsh_params(threshold: float, num_perm: int, weights: tuple[float, float]) -> tuple[int, int]:
    """``MinHashLSH(threshold, num_perm, weights)``'s (bands, rows): the split minimising the
    weighted false positive/negative areas. The integrands are polynomials of degree <= b*r <=
    num_perm, so Gauss-Legendre with num_perm/2 + 1 nodes integrates them exactly (datasketch
    uses scipy's adaptive quadrature for the same integrals)."""
    x, w = np.polynomial.legendre.leggauss(num_perm // 2 + 2)
    lo_s, lo_w = threshold / 2 * (x + 1), w * threshold / 2  # nodes on [0, threshold]
    hi_s, hi_w = threshold + (1 - threshold) / 2 * (x + 1), w * (1 - threshold) / 2
    best, opt = float("inf"), (0, 0)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = float(np.dot(lo_w, 1 - (1 - lo_s**r) ** b))
            fn = float(np.dot(hi_w, (1 - hi_s**r) ** b))
            error = fp * weights[0] + fn * weights[1]
            if error < best:
                best, opt = error, (b, r)
    return opt


class MinHasher:
    """Batched datasketch-compatible (affine32) MinHash signatures of word shingles."""

    def __init__(self, num_perm: int, shingle_words: int, seed: int = 1):
        self.num_perm, self.n = num_perm, shingle_words
        self.a, self.b = affine32_permutations(num_perm, seed)
        self._pow = np.array([pow(31, k, 1 << 32) for k in range(shingle_words)], dtype=np.uint32)

    def shingles(self, words: list[int]) -> np.ndarray:
        """uint32 hash per shingle of ``n`` consecutive words (rolling polynomial)."""
        hv, _ = self._shingles([words])
        return hv

    def _shingles(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Shingle hashes of many rows at once, and each row's start in the result."""
        n = self.n
        lengths = np.array([max(len(r), n) for r in rows], dtype=np.int64)
        flat = np.full(int(lengths.sum()), _PAD, dtype=np.uint32)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        for off, r in zip(offsets, rows, strict=True):
            flat[off : off + len(r)] = r
        span = len(flat) - n + 1
        rolled = np.zeros(span, dtype=np.uint32)
        for k in range(n):
            rolled += flat[k : k + span] * self._pow[k]
        valid = np.ones(len(flat), dtype=bool)
        if n > 1:  # windows that would cross into the next row
            valid[(offsets + lengths)[:, None] - np.arange(1, n)[None, :]] = False
        counts = lengths - n + 1
        return rolled[valid[:span]], np.concatenate([[0], np.cumsum(counts)[:-1]])

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 signatures, equal to datasketch MinHash(affine32)
        fed the same shingle hashes (``hashfunc`` = identity)."""
        return self.signatures_of_words([word_hashes(t) for t in texts])

    def signatures_of_words(self, words: list[list[int]]) -> np.ndarray:
        sig = np.empty((len(words), self.num_perm), dtype=np.uint32)
        for lo in range(0, len(words), _GROUP_ROWS):  # bounded temporary arrays
            rows = words[lo : lo + _GROUP_ROWS]
            hv, starts = self._shingles(rows)
            sig[lo : lo + len(rows)] = np.minimum.reduceat(
                fmix32(hv)[:, None] * self.a + self.b, starts, axis=0
            )
        return sig


class Deduplicator:
    """Exact and LSH indexes (``spillmap``: memory stays flat), one namespace per output kind."""

    def __init__(self, spec: DedupSpec, scratch: Scratch, memory_entries: int = 1 << 18):
        self.spec, self.dir, self.memory = spec, scratch.dir, memory_entries
        self.hasher = MinHasher(spec.num_perm, spec.shingle_words)
        # Recall-leaning band split: candidates are verified against the stored signature, so
        # extra candidates only cost a lookup while a missed one is a kept duplicate.
        bands, rows = lsh_params(spec.threshold, spec.num_perm, LSH_WEIGHTS)
        self.bands = [(i * rows, (i + 1) * rows) for i in range(bands)]
        self.name = scratch.name("dedup")
        self.exact: dict[str, SpillMap] = {}  # per space: key bytes 0-8 -> key bytes 8-16
        self.lsh = SpillMap(self.dir, f"{self.name}-lsh", memory_entries)  # -> signature number
        self.sigs = RecordFile(self.dir / f"{self.name}-sigs", 4 * spec.num_perm)
        # which keys may be stored: most are new, and need no lookup (bloom.py)
        self.exact_filter, self.lsh_filter = Bloom(26), Bloom(27)

    def close(self) -> None:
        for index in (*self.exact.values(), self.lsh, self.sigs):
            index.close()

    def exact_dups(self, items: list[tuple[str, bytes]]) -> list[bool]:
        """For each (space, 16-byte key) in order: seen before (in the index or earlier in the
        list)?"""
        if not self.spec.exact or not items:
            return [False] * len(items)
        if any(len(key) != 16 for _, key in items):
            raise ValueError("exact-dedup keys are 16 bytes (content_key)")
        keys = [space.encode() + b":" + key for space, key in items]
        maybe = self.exact_filter.might_contain(np.array([hash(k) for k in keys], dtype=np.int64))
        known = self._known_exact(
            [item for item, m in zip(items, maybe.tolist(), strict=True) if m]
        )
        out, new = [], []
        for (space, key), k in zip(items, keys, strict=True):
            out.append(k in known)
            if k not in known:
                known.add(k)
                new.append((space, key))
        for space in {space for space, _ in new}:
            halves = np.frombuffer(b"".join(key for s, key in new if s == space), dtype="<i8")
            if space not in self.exact:  # a few spaces (output kinds), smaller memory each
                name = f"{self.name}-exact{len(self.exact)}"
                self.exact[space] = SpillMap(self.dir, name, self.memory // 8)
            index = self.exact[space]
            index.add(halves[0::2], halves[1::2])
        self.exact_filter.add(
            np.array([hash(space.encode() + b":" + key) for space, key in new], dtype=np.int64)
        )
        return out

    def _known_exact(self, asked: list[tuple[str, bytes]]) -> set[bytes]:
        """The asked (space, key) pairs that are in the index, as ``space:key``."""
        known: set[bytes] = set()
        for space in {space for space, _ in asked}:
            if space not in self.exact:
                continue
            keys = [key for s, key in asked if s == space]
            halves = np.frombuffer(b"".join(keys), dtype="<i8")
            stored_hi, stored_lo = self.exact[space].lookup(np.unique(halves[0::2]))
            stored = set(zip(stored_hi.tolist(), stored_lo.tolist(), strict=True))
            pairs = list(zip(halves[0::2].tolist(), halves[1::2].tolist(), strict=True))
            prefix = space.encode() + b":"
            known.update(prefix + k for k, p in zip(keys, pairs, strict=True) if p in stored)
        return known

    def is_exact_dup(self, space: str, key: bytes) -> bool:
        return self.exact_dups([(space, key)])[0]

    def near_dups(self, items: list[tuple[str, str]]) -> list[bool]:
        """For each (space, text) in order: a near-duplicate of an earlier text in its space?
        Texts that are not get indexed, so later ones are compared against them."""
        if not self.spec.near or not items:
            return [False] * len(items)
        sigs = self.hasher.signatures_of_words([word_hashes(text) for _, text in items])
        return self.near_dups_of_batch([space for space, _ in items], sigs)

    def near_dups_of_batch(self, spaces: list[str], sigs: np.ndarray | None) -> list[bool]:
        """``near_dups`` for signatures computed elsewhere (a worker process): a (rows,
        num_perm) array, None when near-dedup is off.

        Candidates already in the index are verified for the whole batch at once (numpy);
        only rows sharing a band key with an earlier row of the same batch are checked row by
        row, so the result equals checking the rows one after the other."""
        if not self.spec.near or not spaces:
            return [False] * len(spaces)
        assert sigs is not None and len(sigs) == len(spaces)
        keys = self._band_keys(spaces, sigs)
        need = self._need()
        dup = self._indexed_dups(sigs, keys, need)
        # in-batch candidates: rows that share a band key with another row of the batch
        _, inverse, counts = np.unique(keys.ravel(), return_inverse=True, return_counts=True)
        shared = (counts[inverse] > 1).reshape(keys.shape)
        fresh: dict[int, list[int]] = {}  # shared band key -> rows of this batch indexed so far
        for i in np.flatnonzero(shared.any(axis=1)).tolist():
            ks = keys[i][shared[i]].tolist()
            if not dup[i]:
                local = [j for k in ks for j in fresh.get(k, ())]
                if local:  # every in-batch candidate at once (repeats do not matter)
                    dup[i] = bool(((sigs[local] == sigs[i]).sum(axis=1) >= need).any())
            if not dup[i]:
                for k in ks:
                    fresh.setdefault(k, []).append(i)
        kept = ~dup
        numbers = self.sigs.append(sigs[kept])
        new_keys = keys[kept]
        self.lsh.add(new_keys.ravel(), np.repeat(numbers, new_keys.shape[1]))
        self.lsh_filter.add(new_keys)
        return dup.tolist()

    def _indexed_dups(self, sigs: np.ndarray, keys: np.ndarray, need: int) -> np.ndarray:
        """Per row: near-duplicate of a row already in the index?"""
        dup = np.zeros(len(sigs), dtype=bool)
        maybe = self.lsh_filter.might_contain(keys)
        rows, bands = np.nonzero(maybe)
        stored_keys, numbers = self.lsh.lookup(np.unique(keys[maybe]))
        # (row, stored signature) pairs a slice at a time, a band key shared by many stored rows
        # (a long common context) makes millions per batch; sliced by signature number, so each
        # stored signature is read once per batch
        for owner, found in join_slices(keys[rows, bands], stored_keys, numbers, EXPAND_PAIRS):
            self._verify(sigs, found << 32 | rows[owner], need, dup)
        return dup

    def _verify(self, sigs: np.ndarray, pairs: np.ndarray, need: int, dup: np.ndarray) -> None:
        """Marks the rows of ``pairs`` (stored number << 32 | row) that agree enough."""
        # by signature, a pair from several shared bands once (np.unique hashes: ~40x slower
        # than a sort here, as the low 32 bits hold only a batch's few row numbers)
        pairs = np.sort(pairs)
        pairs = pairs[np.concatenate([[True], pairs[1:] != pairs[:-1]])]
        # verified a slice at a time: popular texts have many candidates, memory stays bounded
        for lo in range(0, len(pairs), VERIFY_PAIRS):
            part = pairs[lo : lo + VERIFY_PAIRS]
            part = part[~dup[part & 0xFFFFFFFF]]  # a row found a duplicate needs no more checks
            if not len(part):
                continue
            pair_numbers, pair_rows = part >> 32, part & 0xFFFFFFFF
            first = np.ones(len(part), dtype=bool)  # sorted: each number's first pair
            first[1:] = pair_numbers[1:] != pair_numbers[:-1]
            known = self.sigs.read(pair_numbers[first]).view(np.uint32)
            same = sigs[pair_rows] == known[np.cumsum(first) - 1]
            dup[pair_rows[np.count_nonzero(same, axis=1) >= need]] = True

    def _need(self) -> int:
        """Fewest agreeing values whose share reaches the threshold (``mean >= threshold``)."""
        n = self.spec.num_perm
        return next(c for c in range(n + 1) if c / n >= self.spec.threshold)

    def _band_keys(self, spaces: list[str], sigs: np.ndarray) -> np.ndarray:
        """(rows, bands) int64 keys: a 64-bit mix of space, band number and the band's values
        (a rare collision only adds a candidate, which is verified)."""
        salts = {s: zlib.crc32(s.encode()) for s in set(spaces)}
        h = np.array([salts[s] for s in spaces], dtype=np.uint64)[:, None]
        h = h * np.uint64(len(self.bands)) + np.arange(len(self.bands), dtype=np.uint64)[None, :]
        r = self.bands[0][1] - self.bands[0][0]
        banded = sigs[:, : len(self.bands) * r].reshape(len(sigs), len(self.bands), r)
        with np.errstate(over="ignore"):
            for j in range(r):
                h = (h ^ banded[:, :, j].astype(np.uint64)) * np.uint64(0x100000001B3)
                h ^= h >> np.uint64(29)
        return h.view(np.int64)
