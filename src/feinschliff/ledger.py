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
intentional second run with identical inputs does its effects (and notifications) again. The
retrain flow's inputs are the recipe *and* the feedback rows it trains on: a run that broke after
its own promotion is resumed (to finish: notify, close) by a rerun on the same data only; new
feedback starts a new run against the production of now.
:func:`resume_or_restart` abandons an unfinished run whose recorded view of the registry
someone else has changed since (a failed run must not pin every later scheduled run to it).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from feinschliff.artifacts import append_line, file_lock, jsonl_lines

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
        # a line torn inside a multi-byte character (a reviewer's "Grüße") must not make the
        # whole ledger unreadable: it decodes with a replacement and then fails as JSON
        text = self.path.read_bytes().decode("utf-8", errors="replace")
        out = []
        for line in jsonl_lines(text):
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

    def close_run(self, run: str, *, abandoned: str | None = None) -> None:
        """Mark a run finished (or ``abandoned``, with why): the next run with the same inputs
        starts afresh."""
        inputs = next(r["inputs"] for r in self.records() if r.get("run") == run and "inputs" in r)
        extra = {"abandoned": abandoned} if abandoned else {}
        with self._locked():
            self._append({"state": "closed", "run": run, "inputs": inputs, **extra})

    def results(self, run: str, effect: str) -> list[Any]:
        """The results of ``run``'s done effects of kind ``effect`` (as tagged by
        :meth:`perform`), in order; records written without tags are not found."""
        tag = {"run": run, "effect": effect}
        return [
            r.get("result")
            for r in self.records()
            if r.get("state") == "done" and r.get("tags") == tag
        ]

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

    def intent_at(self, key: str) -> float | None:
        """When the effect's ``intent`` was first recorded (``time.time()``), None if never: a
        ``recover`` can tell what happened after the interrupted effect started."""
        return next(
            (r.get("at") for r in self.records() if r.get("key") == key and r["state"] == "intent"),
            None,
        )

    def perform(
        self,
        key: str,
        action: Callable[[], T],
        *,
        what: str = "",
        recover: Callable[[], T | None] | None = None,
        run: str | None = None,
        effect: str | None = None,
    ) -> T:
        """Run ``action`` once per key across reruns; returns its (recorded) JSON-able result.

        ``recover``: called for an interrupted effect (intent, no done); a non-None answer means
        the effect is already in place and becomes its result without running ``action``.
        ``run`` and ``effect`` tag the records, so :meth:`results` can find them by kind.
        """
        tags = {"tags": {"run": run, "effect": effect}} if run and effect else {}
        state, result = self.state(key)
        if state == "done":
            return result
        if state == "intent" and recover is not None:
            found = recover()
            if found is not None:
                self._record(key, "done", what, found, recovered=True, **tags)
                return found
        if state == "new":
            self._record(key, "intent", what, **tags)
        result = action()
        self._record(key, "done", what, result, **tags)
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
        append_line(self.path, line)

    def _locked(self):
        return file_lock(self.path.with_name(self.path.name + ".lock"))


def resume_or_restart(
    ledger: Ledger, inputs: str, production_now: Callable[[], str | None]
) -> tuple[str, str | None]:
    """The run to continue, or a new one when the unfinished run is stale; (run id, why the
    old one was abandoned or None).

    A resumed run trains, evaluates and promotes against the production version it recorded
    (its ``production`` effects). That is right after a crash, including one after its own
    promotion (production is then a version it ``register``-ed): the rerun on the same inputs
    (same data) reuses its training and evaluation and only finishes. When production is neither,
    another promotion or a rollback moved it since: the run's recorded view is stale, and
    resuming would fail its compare-and-swap on every later run with the same recipe.
    """
    run = ledger.open_run(inputs)
    seen = ledger.results(run, "production")
    if not seen:
        return run, None
    now = production_now()
    # the last recorded view is what the promotion compare-and-swaps against
    if now == seen[-1] or now in ledger.results(run, "register"):
        return run, None
    why = f"production moved to {now or 'nothing'} since the run recorded {seen[-1] or 'nothing'}"
    ledger.close_run(run, abandoned=why)
    return ledger.open_run(inputs), why
