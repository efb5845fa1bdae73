"""One copy per row in a Langfuse mirror, the newest, and the windows that re-read rows.

Every scheduled pull re-reads a lookback before its watermark (Langfuse ingests
asynchronously), and the scores once a day re-read a wider window: the APIs filter only by
``startTime`` / ``timestamp``, and neither moves when a score is edited (same id, new value,
later ``updatedAt``) or when a score is written with a past ``timestamp`` (a backfill). Without
compaction each re-read added its rows to the mirror again: 50 pulls a quarter-hour apart
stored every generation about five times, each copy read by every ingest and counted as a
duplicate dropped (``langfuse_observation_seen_twice``).

``compact`` runs on a kind's complete pages before they join the mirror: a row whose id the
mirror holds unchanged is not stored again; a changed one (a later ``updatedAt``, or a new
body) is stored and its older copy removed from the older page, so the ingest reads exactly
one version, the newest. Only other copies of the same id are dropped; rows without an id and
pages that cannot be read are left as they are (the reader quarantines them and says so). The
new pages are placed before older copies are removed: a pull killed in between leaves two
copies, which the reader handles (newest pull first), never none. An ingest reading the mirror
meanwhile reads its own hard-linked snapshot (``pull_snapshot``): pages rewritten or removed
here keep their old inodes there.

Known cost: every pull compares its rows with the whole mirror of their kind (each page read
and each row of the same ids digested), as a changed row may lie in any older page. Measured
~1.1 s per routine quarter-hourly pull against a mirror of 200k generations, ~7 s at 1M
(extrapolated), on top of the fetch; memory stays one page plus an index of the pull's ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from feinschliff.ingest.timestamps import parse_time, time_key

log = logging.getLogger(__name__)
LOOKBACK = timedelta(hours=1)  # late rows: Langfuse ingests asynchronously, clients stamp
RESCAN_WINDOW = timedelta(days=7)  # edited and backfilled scores are found this far back
RESCAN_EVERY = timedelta(days=1)  # ... by the first pull of each such period
RESCANNED = "scores_rescanned"  # the watermark's key: when the scores' window was last re-read
OLD_KEYS = frozenset({"identity", RESCANNED})  # watermark keys that name no pulled row


@dataclass
class Compacted:
    """What one kind's new pages changed in the mirror."""

    new: int = 0  # ids the mirror did not hold
    unchanged: int = 0  # already held as fetched: not stored again
    updated: int = 0  # held in an older version: replaced
    removed: list[tuple[Path, str, str]] = field(default_factory=list)  # (page, id, digest)

    def counts(self) -> dict[str, int]:
        return {"new": self.new, "unchanged": self.unchanged, "updated": self.updated}


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def since(watermark: str | None, back: timedelta = LOOKBACK) -> str | None:
    """The filter value for a stored watermark: ``back`` before it."""
    moment = parse_time(watermark) if watermark else None
    if moment is None or moment - datetime.min.replace(tzinfo=UTC) < back:
        return None  # nothing stored, or a mark at the start of time (a zero-time stamp): all
    return iso(moment - back)


def scores_since(mark: dict[str, str], started: datetime) -> tuple[str | None, bool]:
    """Where the scores are read from, and whether this pull re-reads the rescan window
    (the first pull of each ``RESCAN_EVERY``; a pull from the start reads everything)."""
    last = parse_time(mark.get(RESCANNED)) if mark.get(RESCANNED) else None
    if last is not None and started - last < RESCAN_EVERY:
        return since(mark.get("scores")), False
    return since(mark.get("scores"), RESCAN_WINDOW), True


def advance(watermark: str | None, stamps: list[Any], started: datetime) -> str | None:
    """The newest of the watermark and the rows' stamps, but never past ``started`` (a
    future-dated row would move it beyond rows that other clients stamp correctly later)."""
    moments = [m for m in map(parse_time, [watermark, *stamps]) if m is not None]
    return iso(min(max(moments), started)) if moments else watermark


def check_mirror(mirror: Path, mark: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The watermark to pull from: none when the mirror it describes is gone or empty (deleted
    for retention or an erasure request): everything is pulled again, never only what is
    newer, which would shrink every later dataset to the feedback after the deletion."""
    if not (mark.keys() - OLD_KEYS) or any(mirror.glob("*/*-page-*.json")):
        return mark, []
    log.warning("langfuse pull: the mirror %s is missing or empty: pulling everything", mirror)
    note = (
        f"sources[i]: the pull's mirror was missing or empty while its watermark said feedback "
        f"up to {max(v for k, v in mark.items() if k not in OLD_KEYS)} had been pulled: "
        "everything was pulled again (erase feedback in Langfuse too, or a deleted mirror brings "
        "it back)"
    )
    return {}, [note]


def _identity(row: Any) -> str | None:
    ident = row.get("id") if isinstance(row, dict) else None
    return str(ident) if isinstance(ident, str | int) and str(ident) else None


def _digest(row: Any) -> str:
    text = json.dumps(row, sort_keys=True, ensure_ascii=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _version(row: dict[str, Any]) -> str:
    return time_key(row.get("updatedAt"))  # UNKNOWN (none) sorts first


def _read(page: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(page.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("data"), list) else None


# a new copy: (updatedAt key, order in the pull) sorts versions; its page and place; digest
Copy = tuple[tuple[str, int], Path, int, str]


def compact(partial: Path, mirror: Path, kind: str, save: Any) -> Compacted:
    """Drops from the pages in ``partial`` the rows the mirror holds as they are (or newer),
    and lists the mirror's older copies of rows that changed (``Compacted.removed``, dropped
    by ``drop_older`` once the new pages are in the mirror). ``save(path, page)`` writes a
    page atomically. One page is in memory at a time: a first pull of a large project holds
    GBs of pages, and only each row's id, version, place and digest are kept."""
    newest: dict[str, Copy] = {}
    dropped: dict[Path, set[int]] = {}
    order = 0
    for page in sorted(partial.glob(f"{kind}-page-*.json"), key=_page_number):
        body = _read(page)
        if body is not None and not body["data"]:  # a page without rows adds nothing
            page.unlink()
        for pos, row in enumerate(body["data"] if body else []):
            if (ident := _identity(row)) is None:
                continue
            order += 1  # one id twice in a pull (pages shifting): the later copy wins a tie
            copy = ((_version(row), order), page, pos, _digest(row))
            held = newest.get(ident)
            if held is not None:
                loser, copy = sorted((held, copy), key=lambda c: c[0])
                dropped.setdefault(loser[1], set()).add(loser[2])
            newest[ident] = copy
        del body
    done = Compacted(new=len(newest))
    if newest:
        _against_mirror(mirror, kind, newest, dropped, done)
    del newest
    for page, positions in dropped.items():  # re-read: only pages that lose rows, one by one
        body = _read(page)
        assert body is not None  # it was read above, and nobody else writes ``partial``
        body["data"] = [r for i, r in enumerate(body["data"]) if i not in positions]
        if body["data"]:
            save(page, body)
        else:
            page.unlink()
    return done


def _page_number(page: Path) -> int:
    return int(page.stem.rsplit("-", 1)[-1]) if page.stem.rsplit("-", 1)[-1].isdigit() else 0


def _against_mirror(
    mirror: Path,
    kind: str,
    newest: dict[str, Copy],
    dropped: dict[Path, set[int]],
    done: Compacted,
) -> None:
    """Compares the new copies with the mirror's (every page of the kind, oldest pull first)."""
    held: set[str] = set()  # the mirror has it as fetched, or newer (a lagging replica answered)
    older: list[tuple[Path, str, str]] = []
    for old in sorted(mirror.glob(f"*/{kind}-page-*.json")):
        body = _read(old)
        for row in body["data"] if body else []:
            ident = _identity(row)
            if ident is None or ident not in newest:
                continue
            (version, _), page, pos, digest = newest[ident]
            if (held_as := _digest(row)) == digest or _version(row) > version:
                if ident not in held:
                    held.add(ident)
                    dropped.setdefault(page, set()).add(pos)
            else:
                older.append((old, ident, held_as))
    done.removed = older  # a changed row's older copies (also beside a copy held as is)
    done.unchanged = len(held)
    done.updated = len({i for _, i, _ in older} - held)
    done.new = len(newest) - done.unchanged - done.updated


def drop_older(removed: list[tuple[Path, str, str]], save: Any) -> None:
    """Removes the older copies of changed rows from their pages (after the new ones were
    placed); a page left empty is deleted. A copy is named by id and digest: a page from
    before compaction may hold two versions of one id, and the one kept must stay."""
    by_page: dict[Path, set[tuple[str, str]]] = {}
    for page, ident, digest in removed:
        by_page.setdefault(page, set()).add((ident, digest))
    for page, copies in by_page.items():
        body = _read(page)
        if body is None:
            continue
        ids = {i for i, _ in copies}
        body["data"] = [r for r in body["data"] if not _among(r, ids, copies)]
        if body["data"]:
            save(page, body)
        else:
            page.unlink()


def _among(row: Any, ids: set[str], copies: set[tuple[str, str]]) -> bool:
    return (ident := _identity(row)) in ids and (ident, _digest(row)) in copies


def describe_changes(changed: dict[str, Compacted]) -> list[str]:
    """A manifest note when rows changed in Langfuse since an earlier pull stored them."""
    log.info(
        "langfuse pull (new, unchanged, updated): %s",
        {k: (c.new, c.unchanged, c.updated) for k, c in changed.items()},
    )
    said = [f"{c.updated} {kind}" for kind, c in changed.items() if c.updated]
    if not said:
        return []
    return [
        f"sources[i]: {' and '.join(said)} had changed in Langfuse since an earlier pull stored "
        "them (an edited score, a generation's output written later): the mirror keeps only "
        "their newest version, which this dataset uses"
    ]
