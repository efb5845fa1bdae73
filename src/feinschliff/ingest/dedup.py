"""Exact and near-duplicate removal over training rows, within and across sources.

- **Exact**: sha256 of the row's content (messages, label) after Unicode/whitespace/case
  normalisation; the first occurrence wins.
- **Near** (MinHash LSH): word shingles of the row's user/assistant text; signatures use
  datasketch's ``affine32`` MinHash (its permutations and its fmix pre-mix), computed for a
  batch of rows at once with numpy; the LSH band/row split is datasketch's optimum for the
  threshold, weighted towards recall. Permutations, pre-mix and band split are re-derived here
  with numpy exactly as datasketch derives them (unit tests compare them with datasketch):
  importing datasketch pulls in scipy, over a second of start-up per run. A candidate from a shared band is a duplicate only when the two signatures agree on
  at least ``threshold`` of their values (the Jaccard estimate).

Both indexes live in the scratch database (memory stays flat as exports grow). Deduplication
runs on the original text, before PII pseudonymization (whose ciphertexts are random).
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
from feinschliff.specs.feedback import DedupSpec

_PUNCT = "".join(chr(c) for c in range(0x21, 0x30)) + ":;<=>?@[\\]^_`{|}~„“”‚‘’«»–—…"
_PAD = np.uint32(0x9E3779B9)  # fills short texts up to one shingle
_GROUP_ROWS = 256
LSH_WEIGHTS = (0.1, 0.9)  # false positive, false negative


def normalize(text: str) -> str:
    """Case and whitespace do not make a row new (NFKC only for text outside ASCII)."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.lower().split())


def content_key(row: dict[str, Any], fields: tuple[str, ...]) -> bytes:
    """16-byte key of a row's normalised content (``provenance`` never takes part)."""
    parts = [row[f] for f in fields]
    blob = normalize(dumps(parts).decode("utf-8"))
    return hashlib.sha256(blob.encode("utf-8")).digest()[:16]


def row_text(row: dict[str, Any]) -> str:
    """The text a row is compared on: every non-system message and answer."""
    msgs = row.get("messages") or (row.get("prompt") or []) + (row.get("chosen") or []) + (
        row.get("completion") or []
    )
    msgs = msgs + (row.get("rejected") or [])
    return "\n".join(m["content"] for m in msgs if m.get("role") != "system")


class _WordHashes(dict[str, int]):
    """crc32 per word, memoised; cleared when it grows past a bound (memory stays flat)."""

    LIMIT = 1 << 18

    def __missing__(self, token: str) -> int:
        if len(self) >= self.LIMIT:
            self.clear()
        # Tokens are whitespace-split; punctuation around a word does not make it another word.
        value = self[token] = zlib.crc32(token.strip(_PUNCT).encode("utf-8"))
        return value


_WORD_HASHES = _WordHashes()


def word_hashes(text: str) -> list[int]:
    """One crc32 per word (lowercased, surrounding punctuation ignored), in order."""
    return list(map(_WORD_HASHES.__getitem__, text.lower().split()))


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
    """Exact and LSH indexes in the scratch database, one namespace per output kind."""

    def __init__(self, spec: DedupSpec, scratch: Scratch):
        self.spec, self.db = spec, scratch.db
        self.hasher = MinHasher(spec.num_perm, spec.shingle_words)
        # Recall-leaning band split: candidates are verified against the stored signature, so
        # extra candidates only cost a lookup while a missed one is a kept duplicate.
        bands, rows = lsh_params(spec.threshold, spec.num_perm, LSH_WEIGHTS)
        self.bands = [(i * rows, (i + 1) * rows) for i in range(bands)]
        self.exact, self.lsh, self.sigs = (scratch.name(n) for n in ("exact", "lsh", "sigs"))
        self.db.execute(f"CREATE TABLE {self.exact} (k BLOB PRIMARY KEY) WITHOUT ROWID")
        self.db.execute(
            f"CREATE TABLE {self.lsh} (k INTEGER, rid INTEGER, PRIMARY KEY (k, rid)) WITHOUT ROWID"
        )
        self.db.execute(f"CREATE TABLE {self.sigs} (rid INTEGER PRIMARY KEY, sig BLOB)")
        self._next = 0
        # which keys may be stored: most are new, and need no lookup (bloom.py)
        self.exact_filter, self.lsh_filter = Bloom(26), Bloom(27)

    def exact_dups(self, items: list[tuple[str, bytes]]) -> list[bool]:
        """For each (space, key) in order: seen before (in the index or earlier in the list)?"""
        if not self.spec.exact or not items:
            return [False] * len(items)
        keys = [space.encode() + b":" + key for space, key in items]
        hashed = np.array([hash(k) for k in keys], dtype=np.int64)
        maybe = self.exact_filter.might_contain(hashed).tolist()
        asked = [k for k, m in zip(keys, maybe, strict=True) if m]
        known = set(select_in(self.db, f"SELECT k FROM {self.exact} WHERE k IN ({{}})", asked))
        out, new = [], []
        for k in keys:
            out.append(k in known)
            if k not in known:
                known.add(k)
                new.append((k,))
        self.db.executemany(f"INSERT INTO {self.exact} VALUES (?)", sorted(new))  # B-tree locality
        self.exact_filter.add(np.array([hash(k) for (k,) in new], dtype=np.int64))
        return out

    def is_exact_dup(self, space: str, key: bytes) -> bool:
        return self.exact_dups([(space, key)])[0]

    def near_dups(self, items: list[tuple[str, str]]) -> list[bool]:
        """For each (space, text) in order: a near-duplicate of an earlier text in its space?
        Texts that are not get indexed, so later ones are compared against them."""
        return self.near_dups_of_words([(space, word_hashes(text)) for space, text in items])

    def near_dups_of_words(self, items: list[tuple[str, list[int]]]) -> list[bool]:
        if not self.spec.near or not items:
            return [False] * len(items)
        sigs = self.hasher.signatures_of_words([w for _, w in items])
        return self.near_dups_of_sigs(
            [(space, sig) for (space, _), sig in zip(items, sigs, strict=True)]
        )

    def near_dups_of_sigs(self, items: list[tuple[str, np.ndarray]]) -> list[bool]:
        """Like ``near_dups`` for signatures computed elsewhere (e.g. in a worker process).

        Candidates already in the index are verified for the whole batch at once (numpy);
        only candidates indexed earlier in the same batch are checked row by row, so the
        result equals checking the rows one after the other."""
        if not self.spec.near or not items:
            return [False] * len(items)
        sigs = np.stack([sig for _, sig in items])
        keys = self._band_keys([space for space, _ in items], sigs)
        need = self._need()
        stored: dict[int, list[int]] = {}
        asked = keys[self.lsh_filter.might_contain(keys)]
        for k, rid in select_in(
            self.db, f"SELECT k, rid FROM {self.lsh} WHERE k IN ({{}})", sorted(set(asked.tolist()))
        ):
            stored.setdefault(k, []).append(rid)
        key_lists = keys.tolist()
        dup = np.zeros(len(items), dtype=bool)
        if stored:
            pairs = [
                (i, rid)
                for i, ks in enumerate(key_lists)
                for rid in {r for k in ks for r in stored.get(k, ())}
            ]
            wanted = sorted({rid for _, rid in pairs})
            found = dict(
                select_in(self.db, f"SELECT rid, sig FROM {self.sigs} WHERE rid IN ({{}})", wanted)
            )
            known = np.frombuffer(b"".join(found[r] for r in wanted), dtype=np.uint32)
            known = known.reshape(len(wanted), -1)
            at = {rid: j for j, rid in enumerate(wanted)}
            rows = np.array([i for i, _ in pairs], dtype=np.int64)
            cols = np.array([at[rid] for _, rid in pairs], dtype=np.int64)
            hit = (sigs[rows] == known[cols]).sum(axis=1) >= need
            dup[rows[hit]] = True
        out, new_sigs, new_keys = [], [], []
        fresh: dict[int, list[int]] = {}  # band key -> rows of this batch indexed so far
        for i, ks in enumerate(key_lists):
            is_dup = bool(dup[i])
            if not is_dup:
                local = [j for k in ks for j in fresh.get(k, ())]
                if local:  # every in-batch candidate at once (repeats do not matter)
                    is_dup = bool(((sigs[local] == sigs[i]).sum(axis=1) >= need).any())
            out.append(is_dup)
            if not is_dup:
                self._next += 1
                new_sigs.append((self._next, sigs[i].tobytes()))
                for k in ks:
                    fresh.setdefault(k, []).append(i)
                    new_keys.append((k, self._next))
        self.db.executemany(f"INSERT INTO {self.sigs} VALUES (?, ?)", new_sigs)
        self.db.executemany(f"INSERT INTO {self.lsh} VALUES (?, ?)", sorted(new_keys))
        self.lsh_filter.add(np.array([k for k, _ in new_keys], dtype=np.int64))
        return out

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


def select_in(db: Any, query: str, values: list[Any], size: int = 1000) -> list[Any]:
    """``query`` (with one ``IN ({})``) over ``values``, in chunks of at most ``size``, each
    padded with NULL (which matches nothing) to 16, 128 or ``size`` values: a few statement
    texts per query, so SQLite's statement cache stays small (one cached statement per list
    length made memory grow with the export)."""
    rows: list[Any] = []
    for lo in range(0, len(values), size):
        part = values[lo : lo + size]
        n = next(b for b in (16, 128, size) if b >= len(part))
        sql = query.format(",".join("?" * n))
        found = db.execute(sql, part + [None] * (n - len(part))).fetchall()
        rows += [r[0] if len(r) == 1 else r for r in found]
    return rows
