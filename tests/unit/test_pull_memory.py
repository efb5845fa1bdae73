"""Compaction holds one page at a time, however large a pull is.

A first pull of a project stores all of its history at once (200k generations: ~750 MB of
pages); ``compact`` loaded every page of the pull before comparing, ~3.5x their size on the
heap (746 MiB peak at 200k observations, ~3.5 GiB at 1M), where the pull and the ingest each
stream in a few hundred MiB. Measured with ``tracemalloc`` at two sizes ten times apart: the
peak must not grow with the pages, only with the small index of ids kept per row.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from feinschliff.ingest.pull_versions import compact

ROWS_PER_PAGE = 100
ANSWER = "Eine ausführliche Antwort mit vielen Worten. " * 40  # ~1.8 kB, as generations are


def _pull(folder: Path, rows: int) -> None:
    """A first pull's pages; the last row of each page comes again on the next (pages shifting
    under the cursor), so pages are rewritten too."""
    folder.mkdir(parents=True)
    for n in range(rows // ROWS_PER_PAGE):
        ids = range(n * ROWS_PER_PAGE, (n + 1) * ROWS_PER_PAGE)
        data = [{"id": f"g{i}", "output": f"{ANSWER}{i}", "updatedAt": None} for i in ids]
        if n:
            data.append({**data[0], "id": f"g{n * ROWS_PER_PAGE - 1}"})
        page = {"data": data, "meta": {"page": n + 1}}
        (folder / f"observations-page-{n + 1}.json").write_text(json.dumps(page))


def _save(path: Path, page: dict) -> None:
    path.write_text(json.dumps(page))


def _peak(tmp_path: Path, rows: int) -> int:
    partial, mirror = tmp_path / f"partial-{rows}", tmp_path / f"mirror-{rows}"
    _pull(partial, rows)
    mirror.mkdir()
    tracemalloc.start()
    try:
        done = compact(partial, mirror, "observations", _save)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert done.new == rows  # every id once
    kept = [r["id"] for p in partial.glob("*.json") for r in json.loads(p.read_text())["data"]]
    assert len(kept) == len(set(kept)) == rows
    return peak


def test_compaction_memory_does_not_grow_with_the_pull(tmp_path):
    small, large = _peak(tmp_path, 300), _peak(tmp_path, 3000)
    pages = sum(p.stat().st_size for p in (tmp_path / "partial-3000").glob("*.json"))
    assert large < pages / 3, (small, large, pages)  # all pages in memory: ~3x their size
    assert large < 3 * small, (small, large)  # ten times the rows: was ~7 times the peak
