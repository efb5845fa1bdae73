"""A private on-disk working store (SQLite) for what a streaming ingest must remember.

Joins (Langfuse scores to their observations), seen ids and thumbs waiting for a partner grow
with the export; keeping them in SQLite instead of Python dicts keeps the process's memory flat
(SQLite's page cache is bounded). The dedup indexes live in files of the same directory
(``spillmap``). The store lives in a fresh temporary
directory (mode 0700) and is deleted when the stage ends; it is never part of the output.
Unscrubbed text passes through it transiently (PII is applied when rows are written).
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

CACHE_PAGES_KIB = 32 * 1024  # SQLite page cache bound (32 MiB)


def create_index(db: sqlite3.Connection, sql: str, sort_kib: int = 2048) -> None:
    """``sql`` (a CREATE INDEX on a filled table) with SQLite's sorter held to ``sort_kib``:
    the sorter may use as much memory as the page cache, and the peak would grow with the
    table (it spills to a temporary file instead)."""
    (pages,) = db.execute("PRAGMA cache_size").fetchone()
    db.execute(f"PRAGMA cache_size=-{sort_kib}")
    try:
        db.execute(sql)
    finally:
        db.execute(f"PRAGMA cache_size={pages}")


class Scratch:
    def __init__(self, parent: Path | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="feinschliff-ingest-", dir=parent))
        self.db = sqlite3.connect(self.dir / "work.sqlite", isolation_level=None)
        for pragma in (
            "journal_mode=OFF",
            "synchronous=OFF",
            "temp_store=FILE",
            f"cache_size=-{CACHE_PAGES_KIB}",
            "locking_mode=EXCLUSIVE",
        ):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute("BEGIN")
        self._tables = 0

    def name(self, base: str) -> str:
        """A fresh table name (one per reader/source, so sources never mix)."""
        self._tables += 1
        return f"{base}_{self._tables}"

    def commit(self) -> None:
        self.db.execute("COMMIT")
        self.db.execute("BEGIN")

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Scratch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


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
