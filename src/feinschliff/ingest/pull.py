"""Live pulls: Langfuse over its public REST API (cursor paging), Argilla through its SDK.

A Langfuse pull is incremental. Each source has a watermark in the cache dir
(``$FEINSCHLIFF_HOME/ingest/watermarks/<source>.json``): a scheduled run fetches only what is
newer, and appends it to the source's local mirror (``$FEINSCHLIFF_HOME/ingest/mirror/<source>/``),
which the ingest then reads in full, so the dataset always covers all feedback pulled so far.
The watermark is saved only after a pull completed; overlapping re-fetches are harmless (rows
are deduplicated by id when read).

- Langfuse: ``GET /api/public/v2/observations`` (``fromStartTime``) and
  ``GET /api/public/v3/scores`` (``fromTimestamp``), each from the watermark minus a safety
  lookback (Langfuse ingests asynchronously and stamps come from the clients, so a row can
  appear after a later-stamped one was pulled), followed through ``meta.cursor``; pages are
  stored as returned. A watermark never passes the time the pull started: one client with a
  clock ahead must not hide everyone else's newer rows. Rows that appear more than the lookback
  late, and score *updates* that keep their timestamp, are not re-fetched.
- Argilla: a full snapshot on every pull: the records with at least one submitted response,
  with responses (status kept per response), as nested JSONL beside the dataset settings; the
  snapshot replaces the mirror's older ones once it is complete. Not incremental on purpose:
  Argilla's search index keeps a record's ``updated_at`` when a response is submitted, edited
  or discarded (the server updates only the ``responses`` of the indexed record), so an
  ``updated_at`` watermark lost every response given after the record's first pull, and an
  older copy in the mirror kept answers that were since discarded or deleted. Annotated
  datasets are human-sized; a snapshot costs one paged search per run. An empty snapshot
  where the last one had records is refused (the previous one is kept): a wrong workspace or
  a key that lost its permissions must not wipe the mirror. The newest record
  ``updated_at`` is still recorded as the watermark, for the manifest.

Credentials: environment variables or Prefect Secret blocks only (``credentials``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from feinschliff.ingest.credentials import MissingCredentials, require_secret
from feinschliff.ingest.timestamps import parse_time
from feinschliff.specs.feedback import ArgillaPull, FeedbackSource, LangfusePull

log = logging.getLogger(__name__)
OBS_FIELDS = "core,basic,time,io,metadata,model,usage,prompt,metrics,trace_context"
SCORE_FIELDS = "details,annotation,subject"
LOOKBACK = timedelta(hours=1)
RETRIES = 4


@dataclass
class PullResult:
    mirror: Path
    watermark_before: dict[str, str]
    watermark_after: dict[str, str]
    fetched: dict[str, int] = field(default_factory=dict)


class PullFailed(RuntimeError):
    """A live pull's server could not be reached, answered with an error, or answered with
    something that is no API response (a login page); the watermark is left as it was."""


class EmptySnapshot(RuntimeError):
    """An Argilla pull found nothing where the previous one found records (kept)."""


def state_dir() -> Path:
    from feinschliff.models import feinschliff_home

    return feinschliff_home() / "ingest"


# How a pull fetches, not what: changing one must not start a new mirror and a full re-pull.
TRANSPORT_FIELDS = frozenset({"page_limit", "timeout_s", "batch_size"})


def source_key(source: FeedbackSource, url: str) -> str:
    """The mirror's name: the tool, the server and what is asked for (dataset, filters)."""
    assert source.pull is not None
    return _digest([source.kind, url, source.pull.model_dump(exclude=set(TRANSPORT_FIELDS))])


def _legacy_key(source: FeedbackSource, url: str) -> str:
    """The name mirrors had before transport settings left the key (moved on first use)."""
    assert source.pull is not None
    return _digest([source.kind, url, source.pull.model_dump()])


def _digest(ident: list[Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def pull_source(source: FeedbackSource) -> PullResult:
    if isinstance(source.pull, LangfusePull):
        return _pull_langfuse(source, source.pull)
    assert isinstance(source.pull, ArgillaPull)
    from feinschliff.ingest.pull_argilla import pull_argilla

    return pull_argilla(source, source.pull)


def _paths(source: FeedbackSource, url: str) -> tuple[Path, Path]:
    mirror, mark = _key_paths(source_key(source, url))
    old_mirror, old_mark = _key_paths(_legacy_key(source, url))
    if not mirror.exists() and not mark.exists() and old_mirror != mirror:
        # A mirror named by the old key (transport settings included): keep pulling into it.
        if old_mirror.exists():
            old_mirror.rename(mirror)
        if old_mark.exists():
            old_mark.rename(mark)
    return mirror, mark


def _key_paths(key: str) -> tuple[Path, Path]:
    return state_dir() / "mirror" / key, state_dir() / "watermarks" / f"{key}.json"


def _load_watermark(path: Path) -> dict[str, str]:
    return json.loads(path.read_text()) if path.exists() else {}


def _save_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    try:
        raw = text.encode()
    except UnicodeEncodeError:  # a lone surrogate (legal JSON) stays an escape: its row is
        raw = (json.dumps(data, indent=2) + "\n").encode()  # quarantined when read, not the pull
    tmp.write_bytes(raw)
    tmp.replace(path)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


# --------------------------------------------------------------------------- langfuse


def langfuse_url(pull: LangfusePull) -> str:
    url = pull.base_url or os.environ.get("LANGFUSE_BASE_URL") or os.environ.get("LANGFUSE_HOST")
    if not url:
        raise MissingCredentials(
            "Langfuse pull needs a server URL: feedback.sources[].pull.base_url or LANGFUSE_BASE_URL"
        )
    return url.rstrip("/")


def _langfuse_hint(pull: LangfusePull) -> str:
    """Where the server URL came from, for error messages."""
    if pull.base_url:
        origin = "feedback.sources[].pull.base_url"
    else:
        origin = "LANGFUSE_BASE_URL" if os.environ.get("LANGFUSE_BASE_URL") else "LANGFUSE_HOST"
    return (
        f"Check the server URL (set by {origin}), that Langfuse is up and reachable from here, "
        "and the keys (LANGFUSE_PUBLIC_KEY / LANGFUSE_SECRET_KEY); the watermark is unchanged"
    )


def _pull_langfuse(source: FeedbackSource, pull: LangfusePull) -> PullResult:
    import httpx

    url = langfuse_url(pull)
    hint = _langfuse_hint(pull)
    auth = (
        require_secret("LANGFUSE_PUBLIC_KEY", "Langfuse pull"),
        require_secret("LANGFUSE_SECRET_KEY", "Langfuse pull"),
    )
    mirror, mark_file = _paths(source, url)
    before = _load_watermark(mark_file)
    started = datetime.now(UTC)
    batch = mirror / _stamp()
    after = dict(before)
    fetched = {"observations": 0, "scores": 0}
    obs_params: dict[str, Any] = {"fields": OBS_FIELDS, "limit": pull.page_limit}
    obs_params["type"] = pull.observation_type
    score_params: dict[str, Any] = {"fields": SCORE_FIELDS, "limit": min(pull.page_limit, 100)}
    for params in (obs_params, score_params):
        if pull.environment:
            params["environment"] = pull.environment
    if pull.name:
        obs_params["name"] = pull.name
    if since := _since(before.get("observations")):
        obs_params["fromStartTime"] = since
    if since := _since(before.get("scores")):
        score_params["fromTimestamp"] = since

    try:
        client = httpx.Client(base_url=url, auth=auth, timeout=pull.timeout_s)
    except httpx.InvalidURL as exc:
        raise PullFailed(f"Langfuse pull: {url!r} is no valid URL ({exc}). {hint}") from exc
    with client:
        for kind, path, params, stamp_key in (
            ("observations", "/api/public/v2/observations", obs_params, "startTime"),
            ("scores", "/api/public/v3/scores", score_params, "timestamp"),
        ):
            for n, page in enumerate(_cursor_pages(client, path, params, hint), start=1):
                rows = page.get("data") or []
                fetched[kind] += len(rows)
                stamps = [r.get(stamp_key) for r in rows if isinstance(r, dict)]
                if mark := _advance(after.get(kind), stamps, started):
                    after[kind] = mark
                _save_json(batch / f"{kind}-page-{n}.json", page)
    _save_json(mark_file, after)
    log.info("langfuse pull %s: %s (watermark %s -> %s)", url, fetched, before, after)
    return PullResult(mirror, before, after, fetched)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _since(watermark: str | None) -> str | None:
    """The filter value for a stored watermark: the lookback before it."""
    moment = parse_time(watermark) if watermark else None
    if moment is None or moment - datetime.min.replace(tzinfo=UTC) < LOOKBACK:
        return None  # nothing stored, or a mark at the start of time (a zero-time stamp): all
    return _iso(moment - LOOKBACK)


def _advance(watermark: str | None, stamps: list[Any], started: datetime) -> str | None:
    """The newest of the watermark and the rows' stamps, but never past ``started`` (a
    future-dated row would move it beyond rows that other clients stamp correctly later)."""
    moments = [m for m in map(parse_time, [watermark, *stamps]) if m is not None]
    return _iso(min(max(moments), started)) if moments else watermark


def _cursor_pages(client: Any, path: str, params: dict[str, Any], hint: str) -> Any:
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = _get(client, path, query, hint)
        yield page
        cursor = (page.get("meta") or {}).get("cursor")
        if not cursor or not page.get("data"):
            return


def _get(client: Any, path: str, params: dict[str, Any], hint: str) -> dict[str, Any]:
    """One API page. Transport errors and 429/5xx are retried with backoff; anything else that
    is no page (a 404, an HTML login page answered with 200, a server that stays down) raises
    ``PullFailed`` naming the server, the endpoint and the cause, or ``MissingCredentials``."""
    import httpx

    where = f"{str(client.base_url).rstrip('/')} (GET {path})"
    for attempt in range(RETRIES):
        try:
            response = client.get(path, params=params)
        except httpx.TransportError as exc:
            # a URL without http(s):// fails the same way every time
            if attempt == RETRIES - 1 or isinstance(exc, httpx.UnsupportedProtocol):
                raise PullFailed(
                    f"Langfuse pull: cannot reach {where}: {type(exc).__name__}: "
                    f"{exc or 'no detail'} ({attempt + 1} tries). {hint}"
                ) from exc
        else:
            status = response.status_code
            if status in (401, 403):
                raise MissingCredentials(
                    f"Langfuse at {where} refused the credentials ({status}): check "
                    "LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY (the project's API keys)"
                )
            if status not in (429, 500, 502, 503, 504) or attempt == RETRIES - 1:
                return _page(response, where, hint, attempt + 1)
        time.sleep(min(2**attempt, 10))
    raise RuntimeError("unreachable")


def _page(response: Any, where: str, hint: str, tries: int) -> dict[str, Any]:
    """The JSON page of a response that will not be retried, or ``PullFailed`` saying why it
    is none."""
    status, page = response.status_code, None
    if status < 300:
        with suppress(ValueError):  # not JSON: said below
            page = response.json()
        if isinstance(page, dict) and isinstance(page.get("data", []), list):
            return page
    body = _snippet(response.text)
    if 300 <= status < 400:
        where_to = response.headers.get("location") or "nowhere"
        why = f"a redirect to {where_to} (a login page or proxy in front of the API?)"
    elif status == 404:
        why = "no Langfuse API there (the base URL is the server's root, without /api/public)"
    elif status >= 400:
        why = (f"{tries} times, " if tries > 1 else "") + body
    elif page is None:
        kind = response.headers.get("content-type") or "no content type"
        why = f"a body that is no JSON ({kind}: {body}; a login page or proxy?)"
    else:
        why = f"JSON that is no API page (no `data` list): {body}"
    said = f"{status} {response.reason_phrase}".strip()
    raise PullFailed(f"Langfuse pull: {where} answered {said}: {why}. {hint}")


def _snippet(text: str) -> str:
    """The start of a response body on one line (error pages can be long HTML)."""
    flat = " ".join(text.split())
    return repr(flat[:160] + ("..." if len(flat) > 160 else "")) if flat else "an empty body"
