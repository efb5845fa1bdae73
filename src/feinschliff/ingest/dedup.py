"""Exact and near-duplicate removal over training rows, within and across sources.

- **Exact**: sha256 of the row's content (messages, label) after Unicode/whitespace/case
  normalisation; the first occurrence wins.
- **Near** (MinHash LSH): word shingles of the row's user/assistant text; signatures use
  datasketch's ``affine32`` MinHash (its permutations and its fmix pre-mix), computed for a
  batch of rows at once with numpy; the LSH band/row split is datasketch's optimum for the
  threshold, weighted towards recall. A candidate from a shared band is a duplicate only when the two signatures agree on
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

from feinschliff.ingest.jsonio import dumps
from feinschliff.ingest.scratch import Scratch
from feinschliff.specs.feedback import DedupSpec

_PUNCT = "".join(chr(c) for c in range(0x21, 0x30)) + ":;<=>?@[\\]^_`{|}~„“”‚‘’«»–—…"
_PAD = np.uint32(0x9E3779B9)  # fills short texts up to one shingle
_GROUP_ROWS = 256


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


class MinHasher:
    """Batched datasketch-compatible (affine32) MinHash signatures of word shingles."""

    def __init__(self, num_perm: int, shingle_words: int, seed: int = 1):
        from datasketch import MinHash

        self.num_perm, self.n = num_perm, shingle_words
        a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        self.a, self.b = a.astype(np.uint32), b.astype(np.uint32)
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
        from datasketch.minhash import _fmix

        sig = np.empty((len(words), self.num_perm), dtype=np.uint32)
        for lo in range(0, len(words), _GROUP_ROWS):  # bounded temporary arrays
            rows = words[lo : lo + _GROUP_ROWS]
            hv, starts = self._shingles(rows)
            sig[lo : lo + len(rows)] = np.minimum.reduceat(
                _fmix(hv, 32)[:, None] * self.a + self.b, starts, axis=0
            )
        return sig


class Deduplicator:
    """Exact and LSH indexes in the scratch database, one namespace per output kind."""

    def __init__(self, spec: DedupSpec, scratch: Scratch):
        from datasketch import MinHashLSH

        self.spec, self.db = spec, scratch.db
        self.hasher = MinHasher(spec.num_perm, spec.shingle_words)
        # Recall-leaning band split: candidates are verified against the stored signature, so
        # extra candidates only cost a lookup while a missed one is a kept duplicate.
        lsh = MinHashLSH(threshold=spec.threshold, num_perm=spec.num_perm, weights=(0.1, 0.9))
        self.bands = [(i * lsh.r, (i + 1) * lsh.r) for i in range(lsh.b)]
        self.exact, self.lsh, self.sigs = (scratch.name(n) for n in ("exact", "lsh", "sigs"))
        self.db.execute(f"CREATE TABLE {self.exact} (k BLOB PRIMARY KEY) WITHOUT ROWID")
        self.db.execute(
            f"CREATE TABLE {self.lsh} (k INTEGER, rid INTEGER, PRIMARY KEY (k, rid)) WITHOUT ROWID"
        )
        self.db.execute(f"CREATE TABLE {self.sigs} (rid INTEGER PRIMARY KEY, sig BLOB)")
        self._next = 0

    def exact_dups(self, items: list[tuple[str, bytes]]) -> list[bool]:
        """For each (space, key) in order: seen before (in the index or earlier in the list)?"""
        if not self.spec.exact or not items:
            return [False] * len(items)
        keys = [space.encode() + b":" + key for space, key in items]
        known = set(_select_in(self.db, f"SELECT k FROM {self.exact} WHERE k IN ({{}})", keys))
        out, new = [], []
        for k in keys:
            out.append(k in known)
            if k not in known:
                known.add(k)
                new.append((k,))
        self.db.executemany(f"INSERT INTO {self.exact} VALUES (?)", sorted(new))  # B-tree locality
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
        """Like ``near_dups`` for signatures computed elsewhere (e.g. in a worker process)."""
        if not self.spec.near or not items:
            return [False] * len(items)
        sigs = [sig for _, sig in items]
        keys = [
            [hash((space, b, sig[s:e].tobytes())) for b, (s, e) in enumerate(self.bands)]
            for space, sig in items
        ]
        stored: dict[int, list[int]] = {}
        for k, rid in _select_in(
            self.db,
            f"SELECT k, rid FROM {self.lsh} WHERE k IN ({{}})",
            sorted({k for ks in keys for k in ks}),
        ):
            stored.setdefault(k, []).append(rid)
        wanted = sorted({r for rids in stored.values() for r in rids})
        known_sigs = {
            rid: np.frombuffer(blob, dtype=np.uint32)
            for rid, blob in _select_in(
                self.db, f"SELECT rid, sig FROM {self.sigs} WHERE rid IN ({{}})", wanted
            )
        }
        out, new_sigs, new_keys = [], [], []
        for sig, ks in zip(sigs, keys, strict=True):
            candidates = sorted({rid for k in ks for rid in stored.get(k, ())})
            dup = False
            if candidates:  # the Jaccard estimate against every candidate at once
                agree = (np.stack([known_sigs[rid] for rid in candidates]) == sig).mean(axis=1)
                dup = bool((agree >= self.spec.threshold).any())
            out.append(dup)
            if not dup:
                self._next += 1
                known_sigs[self._next] = sig
                new_sigs.append((self._next, sig.tobytes()))
                for k in ks:
                    stored.setdefault(k, []).append(self._next)
                    new_keys.append((k, self._next))
        self.db.executemany(f"INSERT INTO {self.sigs} VALUES (?, ?)", new_sigs)
        self.db.executemany(f"INSERT INTO {self.lsh} VALUES (?, ?)", sorted(new_keys))
        return out


def _select_in(db: Any, query: str, values: list[Any], size: int = 900) -> list[Any]:
    """``query`` (with one ``IN ({})``) over ``values`` in chunks below SQLite's variable limit."""
    rows: list[Any] = []
    for lo in range(0, len(values), size):
        part = values[lo : lo + size]
        found = db.execute(query.format(",".join("?" * len(part))), part).fetchall()
        rows += [r[0] if len(r) == 1 else r for r in found]
    return rows
