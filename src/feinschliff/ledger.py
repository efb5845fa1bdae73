"""An idempotency ledger for side effects, so a run that is killed and rerun does each one once.

A run's side effects (a registry version, a production alias move, a vLLM load, a notification)
are not undone by a crash, and a rerun that repeats them would register twice, move an alias
someone else moved meanwhile, or announce a promotion twice. The ledger is an append-only JSONL
file (one fsync'd line per record, appended under a file lock) with two records per effect:

- ``intent`` before the effect runs, ``done`` (with its result) after it returned.
- An effect whose key is ``done`` is skipped on a rerun; its recorded result is returned.
- An effect with an ``intent`` but no ``done`` was interrupted: it may or may not have happened.
  The caller's ``recover`` looks whether it is already in place (the version exists, production
  already is that version) and records it as done; otherwise the effect runs again through its
  idempotent path. A notification cannot be observed afterwards, so one interrupted *between*
  sending and its ``done`` record is sent again (at least once; every other boundary: once).

Keys are scoped to a *run*: :meth:`Ledger.open_run` returns the unfinished run with the same
inputs (a rerun after a kill resumes it) or starts a new one once the last was closed, so an
intentional second run with identical inputs does its effects (and notifications) again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")
State = Literal["new", "intent", "done"]


def effect_key(run: str, effect: str, target: str, content: Any = None) -> str:
    """The idempotency key of one side effect: run + what + on what + with which content."""
    blob = json.dumps([run, effect, target, content], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class Ledger:
    """One run directory's ledger (``<workdir>/ledger.jsonl``)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def records(self) -> list[dict[str, Any]]:
        """Every complete record in order; a line torn by a kill mid-append is ignored."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def open_run(self, inputs: str) -> str:
        """The id of the unfinished run with these inputs, or of a new one (``<inputs>-<n>``)."""
        with self._locked():
            records = self.records()
            closed = sum(1 for r in records if r.get("state") == "closed" and r["inputs"] == inputs)
            run = f"{inputs[:16]}-{closed + 1}"
            if not any(r.get("state") == "opened" and r["run"] == run for r in records):
                self._append({"state": "opened", "run": run, "inputs": inputs})
        return run

    def close_run(self, run: str) -> None:
        """Mark a run finished: the next run with the same inputs starts afresh."""
        inputs = next(r["inputs"] for r in self.records() if r.get("run") == run and "inputs" in r)
        with self._locked():
            self._append({"state": "closed", "run": run, "inputs": inputs})

    def state(self, key: str) -> tuple[State, Any]:
        """(``new`` | ``intent`` | ``done``, the recorded result of a done effect)."""
        found: State = "new"
        result = None
        for r in self.records():
            if r.get("key") == key:
                if r["state"] == "done":
                    return "done", r.get("result")
                found = "intent"
        return found, result

    def perform(
        self,
        key: str,
        action: Callable[[], T],
        *,
        what: str = "",
        recover: Callable[[], T | None] | None = None,
    ) -> T:
        """Run ``action`` once per key across reruns; returns its (recorded) JSON-able result.

        ``recover``: called for an interrupted effect (intent, no done); a non-None answer means
        the effect is already in place and becomes its result without running ``action``.
        """
        state, result = self.state(key)
        if state == "done":
            return result
        if state == "intent" and recover is not None:
            found = recover()
            if found is not None:
                self._record(key, "done", what, found, recovered=True)
                return found
        if state == "new":
            self._record(key, "intent", what)
        result = action()
        self._record(key, "done", what, result)
        return result

    def _record(self, key: str, state: str, what: str, result: Any = None, **extra: Any) -> None:
        entry = {"state": state, "key": key, "what": what, **extra}
        if state == "done":
            entry["result"] = result
        with self._locked():
            self._append(entry)

    def _append(self, entry: dict[str, Any]) -> None:
        """One line, flushed and fsync'd before the effect (or the next one) proceeds."""
        line = json.dumps({"at": time.time(), **entry}, default=str, ensure_ascii=False)
        with self.path.open("a", encoding="utf-8") as f:
            if f.tell() and not _ends_with_newline(self.path):
                f.write("\n")  # a kill tore the last line: start a fresh one
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_name(self.path.name + ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
