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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from feinschliff.ingest.credentials import MissingCredentials, require_secret
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
    return _pull_argilla(source, source.pull)


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
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
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


def _pull_langfuse(source: FeedbackSource, pull: LangfusePull) -> PullResult:
    import httpx

    url = langfuse_url(pull)
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

    with httpx.Client(base_url=url, auth=auth, timeout=pull.timeout_s) as client:
        for kind, path, params, stamp_key in (
            ("observations", "/api/public/v2/observations", obs_params, "startTime"),
            ("scores", "/api/public/v3/scores", score_params, "timestamp"),
        ):
            for n, page in enumerate(_cursor_pages(client, path, params), start=1):
                rows = page.get("data") or []
                fetched[kind] += len(rows)
                stamps = [r.get(stamp_key) for r in rows if isinstance(r, dict)]
                if mark := _advance(after.get(kind), stamps, started):
                    after[kind] = mark
                _save_json(batch / f"{kind}-page-{n}.json", page)
    _save_json(mark_file, after)
    log.info("langfuse pull %s: %s (watermark %s -> %s)", url, fetched, before, after)
    return PullResult(mirror, before, after, fetched)


def _parse_time(stamp: Any) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _since(watermark: str | None) -> str | None:
    """The filter value for a stored watermark: the lookback before it."""
    moment = _parse_time(watermark) if watermark else None
    return _iso(moment - LOOKBACK) if moment else None


def _advance(watermark: str | None, stamps: list[Any], started: datetime) -> str | None:
    """The newest of the watermark and the rows' stamps, but never past ``started`` (a
    future-dated row would move it beyond rows that other clients stamp correctly later)."""
    moments = [m for m in map(_parse_time, [watermark, *stamps]) if m is not None]
    return _iso(min(max(moments), started)) if moments else watermark


def _cursor_pages(client: Any, path: str, params: dict[str, Any]) -> Any:
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = _get(client, path, query)
        yield page
        cursor = (page.get("meta") or {}).get("cursor")
        if not cursor or not page.get("data"):
            return


def _get(client: Any, path: str, params: dict[str, Any]) -> dict[str, Any]:
    import httpx

    for attempt in range(RETRIES):
        try:
            response = client.get(path, params=params)
        except httpx.TransportError:
            if attempt == RETRIES - 1:
                raise
        else:
            if response.status_code in (401, 403):
                raise MissingCredentials(
                    f"Langfuse refused the credentials ({response.status_code}) for {path}"
                )
            if response.status_code not in (429, 500, 502, 503, 504):
                response.raise_for_status()
                return response.json()
            if attempt == RETRIES - 1:
                response.raise_for_status()
        time.sleep(min(2**attempt, 10))
    raise RuntimeError("unreachable")


# --------------------------------------------------------------------------- argilla


def _pull_argilla(source: FeedbackSource, pull: ArgillaPull) -> PullResult:
    import argilla as rg

    url = pull.api_url or os.environ.get("ARGILLA_API_URL")
    if not url:
        raise MissingCredentials("Argilla pull needs api_url or the ARGILLA_API_URL variable")
    client = rg.Argilla(api_url=url, api_key=require_secret("ARGILLA_API_KEY", "Argilla pull"))
    dataset = client.datasets(name=pull.dataset, workspace=pull.workspace)
    if dataset is None:
        raise ValueError(f"Argilla dataset {pull.dataset!r} not found on {url}")
    mirror, mark_file = _paths(source, url)
    before = _load_watermark(mark_file)
    query = rg.Query(filter=rg.Filter([("response.status", "==", "submitted")]))
    _save_json(mirror / ".argilla" / "settings.json", dataset.settings.serialize())
    after, count = {}, 0
    target = mirror / f"records-{_stamp()}.jsonl"
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in dataset.records(
            query=query,
            with_responses=True,
            with_suggestions=False,
            with_vectors=False,
            batch_size=pull.batch_size,
        ):
            row = argilla_row(record)
            if row["updated_at"]:
                after["records"] = max(after.get("records", ""), row["updated_at"])
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    previous = sorted(mirror.glob("records-*.jsonl"))
    if count == 0 and any(f.stat().st_size for f in previous):
        tmp.unlink()
        raise EmptySnapshot(
            f"Argilla dataset {pull.dataset!r} on {url} returned no record with a submitted "
            f"response, but the last pull had some: kept the previous snapshot ({previous[-1]}). "
            "Check the workspace, the API key's permissions and the dataset; to accept an "
            f"empty dataset, delete {mirror}"
        )
    tmp.replace(target)
    for older in previous:  # superseded by the complete snapshot
        if older.name < target.name:
            older.unlink()
    _save_json(mark_file, after)
    log.info("argilla pull %s/%s: %d records (full snapshot)", url, pull.dataset, count)
    return PullResult(mirror, before, after, {"records": count})


def argilla_row(record: Any) -> dict[str, Any]:
    """An SDK record in the nested form of ``to_disk``, with each response's status kept."""
    model = record._model  # the record's server timestamps; the SDK keeps none per response
    updated = model.updated_at.isoformat() if model.updated_at else None
    responses: dict[str, list[dict[str, Any]]] = {}
    for r in record.responses:
        status = getattr(r.status, "value", r.status)
        responses.setdefault(r.question_name, []).append(
            {"value": r.value, "user_id": str(r.user_id), "status": status, "updated_at": updated}
        )
    return {
        "id": record.id,
        "_server_id": str(record._server_id) if record._server_id else None,
        "status": record.status,
        "fields": record.fields.to_dict(),
        "responses": responses,
        "updated_at": updated,
    }
