"""A private on-disk working store (SQLite) for what a streaming ingest must remember.

Joins (Langfuse scores to their observations), duplicate keys, LSH buckets and thumbs waiting
for a partner grow with the export; keeping them in SQLite instead of Python dicts keeps the
process's memory flat (SQLite's page cache is bounded). The store lives in a fresh temporary
directory (mode 0700) and is deleted when the stage ends; it is never part of the output.
Unscrubbed text passes through it transiently (PII is applied when rows are written).
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path
from types import TracebackType

CACHE_PAGES_KIB = 32 * 1024  # SQLite page cache bound (32 MiB)


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
