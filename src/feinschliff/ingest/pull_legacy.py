"""The page-based APIs a self-hosted Langfuse v3 serves where the newer cursor APIs are missing.

The live pull reads ``GET /api/public/v2/observations`` and ``GET /api/public/v3/scores``. A
self-hosted Langfuse v3 with default settings answers the first with 404 (v3.159 on; 501 from
v3.143 to v3.158; it needs ``LANGFUSE_MIGRATION_V4_ALLOW_PREVIEW_OPT_IN``), and has v3 scores
only from v3.180.0. Such a server still serves the routes its own SDKs read (Langfuse v3.225.4
source, ``web/src/pages/api/public``): ``GET /api/public/observations`` (v1) and ``GET
/api/public/v2/scores``, both page-based: ``page`` from 1, ``limit`` 1..100, ``meta = {page,
limit, totalItems, totalPages}``, newest first (``start_time`` / ``timestamp`` descending,
``LIMIT ... OFFSET``), with the same filters the pull sends (``type``, ``name``,
``environment``, ``fromStartTime``; ``environment``, ``fromTimestamp``). Their rows are the
shapes the ingest reads from exported pages too: v1 observations hold ``input``/``output`` as
JSON values (v2: strings), v2 scores are flat (``traceId``, ``observationId``, ``stringValue``
for the text of CORRECTION and TEXT scores). v1 observations carry no ``userId``: an end
user's thumbs without ``authorUserId`` are credited to the v2 score row's ``trace.userId``.
A v4 server in ``events_only`` mode answers these two routes with 404, which never matters:
it serves the cursor APIs.

A kind's route is chosen once per pull, by the first page of the cursor API: a 404/501 there,
from a server that showed it is a Langfuse, reads the older route for the rest of the pull (no
404 per page); a 404 there too raises the first one (``langfuse_errors`` words it), and a 404
from a base URL that is no Langfuse API is said as before, without asking the older route.
Offsets shift while rows arrive: a row can come twice (the pull's compaction keeps one copy
per id) and, rarely, a row deleted meanwhile moves another past a page boundary unseen; the
next pull's lookback reads it again only if it is less than the lookback old. v1 observations
are ordered by ``start_time`` alone, so rows sharing a millisecond at a page boundary may come
in either order on either page: one can be read twice and another not at all (the next pull's
lookback reads it while it is recent).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from feinschliff.ingest.langfuse_http import (
    EMPTY_PAGES,
    EndpointMissing,
    PullFailed,
    describe_request,
    get_page,
)

log = logging.getLogger(__name__)
LIMIT = 100  # both page-based routes refuse a larger limit (400)
Pager = Callable[[Any, str, dict[str, Any], str], Iterable[dict[str, Any]]]


@dataclass(frozen=True)
class Legacy:
    path: str
    missing: str  # what the server lacks, for the log and the manifest's notes
    keep: frozenset[str]  # the query parameters the route knows (``fields`` differs)


LEGACY = {
    "/api/public/v2/observations": Legacy(
        "/api/public/observations",
        "v2 observations",
        frozenset({"type", "name", "environment", "fromStartTime"}),
    ),
    "/api/public/v3/scores": Legacy(
        "/api/public/v2/scores",
        "v3 scores",
        frozenset({"environment", "fromTimestamp"}),
    ),
}


def kind_pages(
    pager: Pager,
    client: Any,
    path: str,
    params: dict[str, Any],
    hint: str,
    notes: list[str] | None = None,
    project: str = "",
) -> Iterator[dict[str, Any]]:
    """The pages of ``path`` (``pager``: ``langfuse_http.cursor_pages``, as the caller names
    it), or of its page-based predecessor when a Langfuse answers the first page with 404/501;
    ``notes`` gets a line naming the route read. ``project``: the identity the keys read
    (``project:<id>`` where the projects endpoint answered on this base URL)."""
    pages = iter(pager(client, path, params, hint))
    try:
        first = next(pages)
    except EndpointMissing as missing:
        legacy = LEGACY.get(path)
        if legacy is None or not _langfuse(path, missing, project):
            raise
        yield from _legacy_pages(client, legacy, params, hint, missing, notes)
        return
    yield first
    yield from pages


def _langfuse(path: str, missing: EndpointMissing, project: str) -> bool:
    """Is the 404 a Langfuse's without that route, not a wrong base URL (asked once more
    there, only to fail the same way)? The scores are asked after the observations answered
    on the same base URL; for the observations the server must have shown it: a 501, a
    Langfuse error body, or the projects endpoint answering (v3 before v3.143 has no v2
    observations route at all: its 404 is the framework's page)."""
    if path == "/api/public/v3/scores":
        return True
    refused = missing.answered.startswith("501") or bool(missing.error)
    return refused or project.startswith("project:")


def _legacy_pages(
    client: Any,
    legacy: Legacy,
    params: dict[str, Any],
    hint: str,
    missing: EndpointMissing,
    notes: list[str] | None,
) -> Iterator[dict[str, Any]]:
    query = {k: v for k, v in params.items() if k in legacy.keep}
    query["limit"] = max(1, min(int(params.get("limit") or LIMIT), LIMIT))
    pages = numbered_pages(client, legacy.path, query, hint)
    try:
        first = next(pages)
    except EndpointMissing as exc:
        raise missing from exc  # neither route: the first answer says why (a wrong base URL?)
    note = (
        f"Langfuse server without {legacy.missing} ({missing.answered}): reading "
        f"{legacy.path} (page-based)"
    )
    log.info("langfuse pull: %s", note)
    if notes is not None:
        notes.append(f"langfuse pull: {note}")
    yield first
    yield from pages


def numbered_pages(
    client: Any, path: str, params: dict[str, Any], hint: str
) -> Iterator[dict[str, Any]]:
    """Pages 1, 2, ... of ``path`` until ``meta.totalPages`` (read from each page: rows come
    and go meanwhile; without it, an empty or short page). A server that ignores ``page`` (a
    proxy or cache that drops the query string) answers page one again: a ``meta.page`` other
    than the one asked for, or a page starting with the row an earlier page started with while
    ``totalItems`` stayed the same (rows that arrived shift the pages: no loop), fails instead
    of looping."""
    seen: dict[tuple[str, Any], int] = {}
    n, empty = 1, 0
    while True:
        page = get_page(client, path, {**params, "page": n}, hint)
        rows = page.get("data") or []
        empty = 0 if rows else empty + 1
        if empty >= EMPTY_PAGES:  # a count that never ends (totalPages from a broken proxy)
            raise PullFailed(
                f"Langfuse pull: {describe_request(client, path)} answered "
                f"{empty} empty pages in a row "
                f"(up to page {n}) while its page count said more would come. {hint}"
            )
        meta = page.get("meta") if isinstance(page.get("meta"), dict) else {}
        said = meta.get("page")
        first = _first_key(rows)
        key = (first, meta.get("totalItems")) if first is not None else None
        again = said if type(said) is int and said != n else seen.get(key) if key else None
        if again is not None:
            raise PullFailed(
                f"Langfuse pull: {describe_request(client, path)} answered "
                f"page {n} with page {again} "
                "again: paging would never end (a proxy or cache in front of the API that drops "
                f"the query string?). {hint}"
            )
        yield page
        total = meta.get("totalPages")
        if type(total) is int:
            # only the count ends it: v2 scores drop rows that fail the server's validation
            # after LIMIT/OFFSET, so an empty or short page can come before older ones
            if n >= total:
                return
        elif not rows or len(rows) < int(params.get("limit") or LIMIT):
            return  # no page count: an empty or short page is the last
        if key is not None:
            seen[key] = n
        n += 1


def _first_key(rows: list[Any]) -> str | None:
    if not rows:
        return None
    row = rows[0]
    ident = row.get("id") if isinstance(row, dict) else None
    if isinstance(ident, str | int) and str(ident):
        return str(ident)
    return json.dumps(row, sort_keys=True, default=str)
