"""Argilla live pull: a full snapshot of the submitted records through the SDK (see
``feinschliff.ingest.pull`` for why it is not incremental)."""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from feinschliff.artifacts import file_lock
from feinschliff.ingest.credentials import MissingCredentials, require_sourced
from feinschliff.ingest.pull import (
    EmptySnapshot,
    PullFailed,
    PullResult,
    _load_watermark,
    _paths,
    _save_json,
    _stamp,
    state_dir,
)
from feinschliff.ingest.pull_snapshot import take_snapshot
from feinschliff.redact import redact_request_credentials
from feinschliff.specs.feedback import ArgillaPull, FeedbackSource

log = logging.getLogger(__name__)


def pull_argilla(source: FeedbackSource, pull: ArgillaPull) -> PullResult:
    import argilla as rg

    url = pull.api_url or os.environ.get("ARGILLA_API_URL")
    if not url:
        raise MissingCredentials("Argilla pull needs api_url or the ARGILLA_API_URL variable")
    key, key_from = require_sourced(pull.api_key_secret, "Argilla pull")
    with _argilla_errors(url, key_from):
        client = rg.Argilla(api_url=url, api_key=key)
        dataset = _argilla_dataset(client, pull, url)
        # by the dataset's id: without a workspace the key's user picks it, so one recipe
        # shape can read another dataset under another key (another use case's snapshot)
        identity = f"dataset:{dataset.id}"
        mirror, mark_file, _ = _paths(source, url, identity)  # a snapshot replaces all
        before = _load_watermark(mark_file)
        settings = dataset.settings.serialize()
        mirror.mkdir(parents=True, exist_ok=True)
        target = mirror / f"records-{_stamp()}.jsonl"
        tmp = target.with_name(target.name + ".tmp")
        after, count = _argilla_snapshot(rg, dataset, pull, tmp)
        after["identity"] = identity
    # under the source's pull lock, and read from a snapshot: replacing the older records
    # file under an ingest still reading it (another run's pull of the same dataset) failed
    # that ingest with FileNotFoundError
    with file_lock(state_dir() / "locks" / f"{mirror.name}.lock"):
        previous = sorted(mirror.glob("records-*.jsonl"))
        if count == 0 and any(f.stat().st_size for f in previous):
            tmp.unlink()
            raise EmptySnapshot(
                f"Argilla dataset {pull.dataset!r} on {url} returned no record with a submitted "
                f"response, but the last pull had some: kept the previous snapshot "
                f"({previous[-1]}). Check the workspace, the API key's permissions and the "
                f"dataset; to accept an empty dataset, delete {mirror}"
            )
        # the settings with their snapshot: a failed or refused pull keeps the older records
        # readable with the settings they were annotated under
        _save_json(mirror / ".argilla" / "settings.json", settings)
        tmp.replace(target)
        for older in previous:  # superseded by the complete snapshot
            if older.name < target.name:
                older.unlink()
        _save_json(mark_file, after)
        snapshot = take_snapshot(mirror, state_dir() / "reading")
    log.info("argilla pull %s/%s: %d records (full snapshot)", url, pull.dataset, count)
    return PullResult(snapshot.path, before, after, {"records": count}, snapshot=snapshot)


@contextmanager
def _argilla_errors(url: str, key_from: str) -> Iterator[None]:
    """The SDK's errors as one line: its API errors, httpx transport errors, and the JSON or
    pydantic ``ValueError`` of a server that answers with no Argilla API (a login page).
    ``key_from``: where the API key came from, said when it is refused (never its value)."""
    import httpx
    from argilla._exceptions import ArgillaAPIError, ArgillaCredentialsError, ArgillaError

    try:
        yield
    except ArgillaCredentialsError as exc:
        raise MissingCredentials(
            f"Argilla at {url} refused the API key ({key_from}), named by "
            "feedback.sources[].pull.api_key_secret"
        ) from exc
    except (ArgillaError, httpx.HTTPError, ValueError) as exc:
        endpoint, request = "", None
        for e in (exc, exc.__cause__, exc.__context__):  # the SDK wraps httpx's errors
            if isinstance(e, httpx.HTTPStatusError | httpx.RequestError) and not endpoint:
                with suppress(RuntimeError):  # an error raised without its request
                    request = e.request
                    endpoint = f" ({e.request.method} {e.request.url.path})"
        cause = str(exc) if isinstance(exc, ArgillaError) else f"{type(exc).__name__}: {exc}"
        cause = redact_request_credentials(request, cause)  # a proxy may echo the key
        if isinstance(exc, ArgillaAPIError):
            cause = f"HTTP {exc.status_code}, {cause}"
        elif isinstance(exc, ValueError):
            cause += " (an answer that is no Argilla API JSON: a login page or proxy?)"
        # the key only where the server refused it: a down server is no key problem
        refused = isinstance(exc, ArgillaAPIError) and exc.status_code in (401, 403)
        raise PullFailed(
            f"Argilla pull: {url}{endpoint} failed: {' '.join(cause.split())[:300]}. Check the "
            "server URL (api_url or ARGILLA_API_URL) and that Argilla is up and reachable from "
            "here"
            + (f", and the API key ({key_from})" if refused else "")
            + "; an earlier snapshot is kept"
        ) from exc


def _argilla_dataset(client: Any, pull: ArgillaPull, url: str) -> Any:
    # the SDK warns and returns None for a missing workspace or dataset (and fails on a None
    # workspace): said here in one line instead
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        workspace = client.workspaces(pull.workspace) if pull.workspace else None
        if pull.workspace and workspace is None:
            raise PullFailed(
                f"Argilla pull: no workspace {pull.workspace!r} on {url} that "
                f"{pull.api_key_secret} can see: check feedback.sources[].pull.workspace and the key's user"
            )
        dataset = client.datasets(name=pull.dataset, workspace=workspace)
    if dataset is None:
        raise PullFailed(
            f"Argilla pull: no dataset {pull.dataset!r} in workspace "
            f"{pull.workspace or '(default)'} on {url}: check feedback.sources[].pull.dataset "
            f"and .workspace, and that {pull.api_key_secret}'s user may read it"
        )
    return dataset


def _argilla_snapshot(rg: Any, dataset: Any, pull: ArgillaPull, tmp: Path) -> tuple[dict, int]:
    """Every record with a submitted response into ``tmp`` (removed when the pull fails)."""
    query = rg.Query(filter=rg.Filter([("response.status", "==", "submitted")]))
    after: dict[str, str] = {}
    count = 0
    try:
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
                f.write(_line(row))
                count += 1
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return after, count


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


def _line(row: dict[str, Any]) -> str:
    text = json.dumps(row, ensure_ascii=False) + "\n"
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate (legal JSON) stays an escape: the reader
        text = json.dumps(row) + "\n"  # quarantines its record instead of failing the pull
    return text
