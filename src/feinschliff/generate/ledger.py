"""What the teacher has already answered, and what this run may still spend.

distilabel runs every pipeline step in its own process, so both stores are files shared by
those processes under an ``flock``:

- ``RequestCache``: one JSONL line per completed request, keyed by the sha256 of the request
  body (model, messages, sampling, schema). Lines are flushed as each response arrives, so a
  run that dies midway (teacher outage, kill) loses nothing it was already given; the rerun
  sends only the requests that had not completed. A torn last line is ignored, and the next
  entry starts on a line of its own (``artifacts.append_line``).
- ``Ledger``: this run's spending and state: live requests and tokens against the budget, and
  the first fatal teacher error. Once the budget is spent or the teacher has failed, every
  further request is refused at once instead of hitting the endpoint again. A request
  reserves the tokens it may cost before it is sent and settles them with the real usage
  afterwards, so a batch of concurrent requests cannot all pass the check against the same
  old total and overshoot ``max_tokens`` together.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from feinschliff.artifacts import append_line, file_lock, jsonl_lines


def request_key(body: dict[str, Any]) -> str:
    blob = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _locked(path: Path):
    return file_lock(path.with_name(path.name + ".lock"))


class RequestCache:
    """Append-only JSONL of ``{"key", "response"}`` lines."""

    def __init__(self, path: Path):
        self.path = path
        self._entries: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in jsonl_lines(path.read_text(encoding="utf-8")):
                try:
                    entry = json.loads(line)
                    self._entries[entry["key"]] = entry["response"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a crash mid-write

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._entries.get(key)

    def put(self, key: str, response: dict[str, Any]) -> None:
        self._entries[key] = response
        with _locked(self.path):
            # ends a line torn by a kill first: glued onto it, this entry would be lost too
            append_line(
                self.path, json.dumps({"key": key, "response": response}, ensure_ascii=False)
            )

    def keep(self, key: str, response: dict[str, Any], ledger: Ledger) -> None:
        """``put``; a failed write (a full disk) fails the run in ``ledger`` as this cache's
        failure, not the teacher's (``cache_failure`` turns it back into an OSError)."""
        try:
            self.put(key, response)
        except OSError as exc:
            why = exc.strerror or str(exc)
            ledger.fail(f"{CACHE_FAILED} {exc.filename or self.path}: {why} (errno {exc.errno})")


# how a failed request cache write reads in the ledger's `failed`
CACHE_FAILED = "request cache"
_CACHE_FAILED_RE = re.compile(rf"^{CACHE_FAILED} (.+): (.+) \(errno (\d+|None)\)$", re.S)


def cache_failure(failed: str | None) -> OSError | None:
    """The OSError a ledger's ``failed`` records (``RequestCache.keep``), or None."""
    m = _CACHE_FAILED_RE.match(failed or "")
    if m is None:
        return None
    code = int(m[3]) if m[3] != "None" else 0
    return OSError(code, f"{CACHE_FAILED}: {m[2]}", m[1])


class Ledger:
    """Counters and state of one run, in a small JSON file shared by the step processes."""

    FIELDS = {
        "requests": 0,
        "tokens": 0,
        "reserved_tokens": 0,
        "cache_hits": 0,
        "rejected": 0,
        "refused": 0,
        "truncated": 0,
        "budget_exhausted": None,
        "failed": None,
        "first_rejection": None,  # the endpoint's first 400/413/422 ("HTTP 400: body")
        "rejections_differ": False,  # a later rejection said something else
    }

    def __init__(self, path: Path, max_requests: int | None, max_tokens: int | None):
        self.path, self.max_requests, self.max_tokens = path, max_requests, max_tokens

    def reset(self) -> None:
        with _locked(self.path):
            self._write(dict(self.FIELDS))

    def read(self) -> dict[str, Any]:
        if not self.path.exists():
            return dict(self.FIELDS)
        return {**self.FIELDS, **json.loads(self.path.read_text())}

    def _write(self, state: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.path)

    def reserve(self, tokens: int) -> str | None:
        """Take one request and the ``tokens`` it may cost from the budget; the reason it may
        not be sent, or None. The tokens stay reserved until ``record`` settles them."""
        with _locked(self.path):
            state = self.read()
            reason = state["failed"] or state["budget_exhausted"]
            if reason is None:
                committed = state["tokens"] + state["reserved_tokens"] + tokens
                if self.max_requests is not None and state["requests"] >= self.max_requests:
                    reason = f"budget: max_requests={self.max_requests} reached"
                elif (
                    self.max_tokens is not None
                    and committed > self.max_tokens
                    # the first request always goes out: a cap below one request's worst
                    # case would otherwise send nothing, ever (its real cost is recorded)
                    and (state["tokens"] or state["reserved_tokens"])
                ):
                    reason = f"budget: max_tokens={self.max_tokens} reached"
                if reason is not None:
                    state["budget_exhausted"] = reason
            if reason is None:
                state["requests"] += 1
                state["reserved_tokens"] += tokens
            else:
                state["refused"] += 1
            self._write(state)
            return reason

    def record(
        self,
        *,
        cache_hit: bool,
        tokens: int,
        truncated: int,
        rejected: int,
        reserved: int,
        rejection: str | None = None,
    ) -> None:
        """One answered request: from the cache or live (``tokens`` spent, ``reserved`` of them
        reserved before sending; a failed request records 0 tokens to release them), and how
        many of its replies hit the token limit or were refused by the endpoint as invalid
        (``rejection``: the endpoint's error for a refused one)."""
        with _locked(self.path):
            state = self.read()
            if rejected:
                if state["first_rejection"] is None:
                    state["first_rejection"] = rejection
                elif rejection != state["first_rejection"]:
                    state["rejections_differ"] = True
            state["cache_hits"] += int(cache_hit)
            state["tokens"] += tokens
            state["reserved_tokens"] -= reserved
            state["truncated"] += truncated
            state["rejected"] += rejected
            # The reservation is an estimate (the prompt's tokens are guessed from its length).
            over = self.max_tokens is not None and state["tokens"] > self.max_tokens
            if over and state["budget_exhausted"] is None:
                state["budget_exhausted"] = f"budget: max_tokens={self.max_tokens} reached"
            self._write(state)

    def fail(self, message: str) -> None:
        """Record the first fatal teacher error; later requests are refused without sending."""
        with _locked(self.path):
            state = self.read()
            if state["failed"] is None:
                state["failed"] = message
            self._write(state)


def budget_stop(status: dict[str, Any]) -> str | None:
    """Why the budget cut the run short, or None. The request that carries the tokens past
    ``max_tokens`` marks the budget spent (later ones are not sent); when it was the last one,
    no request was refused and the output is complete, not stopped (nothing to continue)."""
    return status.get("budget_exhausted") if status.get("refused") else None


def budget_note(stopped: str, counts: dict[str, Any], status: dict[str, Any]) -> str:
    """What a run cut short by its budget says (the log, the CLI's warning: both from the
    manifest's ``counts``, so they say the same)."""
    replies = status.get("requests", 0) - status.get("rejected", 0) + status.get("cache_hits", 0)
    sft, pref = counts["sft.jsonl"], counts["preference.jsonl"]
    if sft or pref:
        return (
            f"stopped early ({stopped}); {sft} SFT + {pref} preference rows written "
            "(rerun to continue)"
        )
    return (
        f"stopped early ({stopped}) before any question was answered: no rows yet; rerun to "
        f"continue ({replies} teacher replies of this run are cached, so none is asked again)"
    )
