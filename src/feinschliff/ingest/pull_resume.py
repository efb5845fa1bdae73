"""Resuming a Langfuse pull that stopped part-way, from the cursor of its last saved page.

A kind's pages wait beside the mirror (``.<source>.partial/<stamp>-<kind>/``) until it was
read to its end. Beside them, after each saved page, ``<kind>.resume.json`` (written
atomically) records where the pull stands: the route, the query without the cursor, the next
cursor (null: every page was saved), the pages and rows saved, the watermark so far, when the
pull started and when it saved its last page. A pull that fails (retries spent, a 5xx storm, a
422 on a huge project, Ctrl-C) or is killed keeps them, and the next pull of the source (the
same mirror: server, filters, project) continues that kind from the saved cursor, numbering
pages on, then compacts and places its pages as a pull read at one go does. A first pull of a
large project (1M generations at ~30 requests a minute: ~35 minutes) is no longer all or
nothing.

Why a saved cursor is safe to send again: Langfuse's cursors are stateless keyset cursors
(v4.16 source: v2 observations base64 of ``{lastStartTimeTo, lastTraceId, lastId}``, v3
scores base64url of ``{v: 1, lastTimestamp, lastId}``, both ordered newest first), so the same
query with the cursor answers the rows after that row, whenever it is asked. Rows that arrived
meanwhile are newer than the cursor: the resumed kind's watermark is capped at the original
pull's start (never past it), so the next pull's lookback reads them.

A state is discarded (a log line, a manifest note) and the kind read from its start when the
query differs (recipe filters changed, the watermark moved), the original pull started more
than ``MAX_AGE`` ago, the state cannot be read or its pages are gone, or the server refuses
the saved cursor (400, or the route is gone: 404/501). The page-based routes of a self-hosted
v3 (``pull_legacy``) are never resumed: their offsets shift as rows arrive. Pulls of a source
take turns under an flock (``pull``), so nothing here races another pull.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from feinschliff.ingest.langfuse_http import CursorLoop, EndpointMissing, PullFailed
from feinschliff.ingest.pull_versions import iso
from feinschliff.ingest.timestamps import parse_time

log = logging.getLogger(__name__)
MAX_AGE = timedelta(days=7)  # an older pull's pages and cursor are not continued
SUFFIX = ".resume.json"
KINDS = ("observations", "scores")
Pager = Callable[..., Iterable[dict[str, Any]]]


def partial_dir(mirror: Path) -> Path:
    """Where a pull's pages wait until their kind was read to its end: beside the mirror (same
    disk, erased with it), never in it, as the ingest reads every file in the mirror."""
    return mirror.parent / f".{mirror.name}.partial"


def forget_stopped(root: Path) -> None:
    """Drops every stopped pull's pages and states: its mirror was deleted (retention, an
    erasure request), and resuming would put the rows it held back."""
    _remove(root)


class _Refused(Exception):  # noqa: N818 - private: the saved cursor was refused, start over
    pass


def _plain(params: dict[str, Any]) -> Any:
    """The query as the state file holds it (JSON), for comparing."""
    return json.loads(json.dumps(params, sort_keys=True, default=str))


class Resumes:
    """One pull's view of the resumable kinds beside a mirror. Made under the source's lock:
    it removes what is not resumable (a killed pull's pages on a page-based route, temp files,
    states it discards) and keeps the rest."""

    def __init__(self, root: Path, now: datetime, save: Callable[[Path, Any], None], who: str):
        self.root, self.now, self.save, self.who = root, now, save, who
        self.notes: list[str] = []
        self.states: dict[str, dict[str, Any]] = {}
        for kind in KINDS:
            file = root / f"{kind}{SUFFIX}"
            if file.exists() and (state := self._load(kind, file)) is not None:
                self.states[kind] = state
        keep = {f"{k}{SUFFIX}" for k in self.states} | {s["folder"] for s in self.states.values()}
        for entry in root.iterdir() if root.is_dir() else []:
            if entry.name not in keep:  # a killed pull's on a page-based route, a temp file
                _remove(entry)

    def _load(self, kind: str, file: Path) -> dict[str, Any] | None:
        try:
            state = json.loads(file.read_text())
            started = parse_time(state["started"])
            folder = state["folder"]
            ok = isinstance(folder, str) and Path(folder).name == folder and folder[:1] != "."
            ok = ok and started is not None and type(state["pages"]) is int
            ok = ok and isinstance(state["path"], str) and isinstance(state["query"], dict)
            ok = ok and type(state.get("rows", 0)) is int
            ok = ok and all(isinstance(state.get(k), str | None) for k in ("cursor", "mark"))
        except (OSError, ValueError, TypeError, KeyError):
            ok = False
        if not ok:
            self.discard(kind, "its resume state cannot be read")
            return None
        if not (self.root / folder).is_dir():
            self.discard(kind, "its saved pages are gone")
            return None
        if self.now - started > MAX_AGE:
            self.discard(kind, f"it started on {state['started']}, over {MAX_AGE.days} days ago")
            return None
        return {**state, "started": started}

    def discard(self, kind: str, why: str) -> None:
        """Forgets a kind's state and pages, saying so (its pull starts from page 1)."""
        state = self.states.pop(kind, None)
        if state is not None:
            _remove(self.root / state["folder"])
        _remove(self.root / f"{kind}{SUFFIX}")
        said = f"a stopped pull of the {kind} was not resumed ({why}): read from the start"
        log.warning("langfuse pull of %s: %s", self.who, said)
        self.notes.append(f"sources[i]: langfuse pull: {said}")

    def started(self, kind: str) -> datetime:
        """When the pull that ``kind`` continues started (this one's start if none)."""
        return self.states[kind]["started"] if kind in self.states else self.now

    def run(self, kind: str, path: str, params: dict[str, Any], stamp: str, mark: str | None):
        """How ``kind`` is read now: resumed where its state fits the query, else afresh."""
        state = self.states.get(kind)
        if state is not None and (state["path"], state["query"]) != (path, _plain(params)):
            self.discard(kind, "its query changed: the recipe's filters or the watermark")
            state = None
        return KindRun(self, kind, path, params, stamp, mark, state)


class KindRun:
    """One kind of one pull: where its pages go, what was read so far, its state file."""

    def __init__(
        self,
        resumes: Resumes,
        kind: str,
        path: str,
        params: dict[str, Any],
        stamp: str,
        mark: str | None,
        state: dict[str, Any] | None,
    ):
        self.resumes, self.kind, self.path, self.stamp = resumes, kind, path, stamp
        self.query, self.before = _plain(params), mark
        self.file = resumes.root / f"{kind}{SUFFIX}"
        self.cursor_route = False  # the pages came through the cursor API (resumable)
        self.read_now = 0  # pages this pull read (a resumed kind's earlier ones not counted)
        self._fresh()
        if state is not None:
            self.state, self.started, self.mark = state, state["started"], state.get("mark")
            self.folder, self.next = resumes.root / state["folder"], state["pages"] + 1
            self.rows, self.cursor = state.get("rows", 0), state.get("cursor")
            self.cursor_route = True
            said = f"at page {self.next} (a pull stopped on {state.get('stopped', '?')})"
            log.info("langfuse pull: resuming the %s of %s %s", kind, resumes.who, said)
            resumes.notes.append(
                f"sources[i]: langfuse pull resumed the {kind} {said}, started on "
                f"{iso(self.started)}: its watermark stays at or before that start"
            )

    def _fresh(self) -> None:
        self.state: dict[str, Any] | None = None
        self.started, self.mark, self.rows = self.resumes.now, self.before, 0
        self.folder = self.resumes.root / f"{self.stamp}-{self.kind}"
        self.next, self.cursor = 1, None

    def pages(self, read: Callable[[Pager], Iterable[Any]], cursor_pages: Pager) -> Iterator:
        """``(number, page)`` for the kind's pages still to read; ``read(pager)`` is the route
        choice (``pull_legacy.kind_pages``) over ``pager``. A refused saved cursor starts over."""
        if self.state is not None:
            if self.cursor is None:  # every page was saved before it stopped
                return
            try:
                yield from self._numbered(read(self._pager(cursor_pages, resume=True)))
                return
            except _Refused as exc:
                self.resumes.discard(self.kind, f"the server refused the saved cursor: {exc}")
                self.cursor_route = False
                self._fresh()
        yield from self._numbered(read(self._pager(cursor_pages, resume=False)))

    def _numbered(self, pages: Iterable[Any]) -> Iterator[tuple[int, Any]]:
        for page in pages:
            self.read_now += 1
            yield self.next, page
            self.next += 1

    def _pager(self, cursor_pages: Pager, resume: bool) -> Pager:
        def pager(client: Any, path: str, params: dict[str, Any], hint: str) -> Iterator:
            more = {"cursor": self.cursor, "first": self.next} if resume else {}
            pages = iter(cursor_pages(client, path, params, hint, **more))
            try:
                first = next(pages)
            except PullFailed as exc:  # 400: a cursor it no longer takes; 404/501: no route
                if resume and (isinstance(exc, EndpointMissing) or exc.status == 400):
                    raise _Refused(str(exc)) from exc
                raise
            self.cursor_route = True
            yield first
            try:
                yield from pages
            except CursorLoop:  # a proxy that drops the query string: nothing to resume
                self.cursor_route = False
                _remove(self.file)
                raise

        return pager

    def saved(self, n: int, page: dict[str, Any]) -> None:
        """Records that page ``n`` was written (the state a later pull resumes from)."""
        if not self.cursor_route:
            return  # a page-based route: offsets shift, never resumed
        self.cursor = (page.get("meta") or {}).get("cursor")
        self.state = {
            "path": self.path,
            "query": self.query,
            "cursor": self.cursor,
            "pages": n,
            "rows": self.rows,
            "mark": self.mark,
            "started": iso(self.started),
            "stopped": iso(datetime.now(UTC)),
            "folder": self.folder.name,
        }
        self.resumes.save(self.file, self.state)

    def close(self, done: bool) -> None:
        """After the kind: its pages and state go unless it stopped resumably."""
        if done or not self.file.exists():
            _remove(self.folder)
            _remove(self.file)
        with suppress(OSError):
            self.resumes.root.rmdir()  # only when nothing is left to resume


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with suppress(OSError):
            entry.unlink()
