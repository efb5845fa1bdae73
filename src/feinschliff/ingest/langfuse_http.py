"""Langfuse's public REST API as a live pull reads it: pages, retries, cursors, the project.

Transport errors and 5xx answers are retried a few times with backoff. A 429 is the server's
rate limit (Langfuse Cloud limits its public API per minute): it is waited out as the server
asks (``Retry-After``, seconds or an HTTP date) within a budget per request, so a large first
pull slows down instead of failing on every scheduled run. Anything else that is no API page
raises ``PullFailed`` naming the server, the endpoint and the cause.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import suppress
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from feinschliff.ingest.credentials import MissingCredentials
from feinschliff.redact import redact_response_text

RETRIES = 4  # tries for transport errors and 5xx answers
RATE_LIMIT_WAIT_S = 300.0  # waiting for 429s per request, at most
RETRIED_STATUS = (500, 502, 503, 504)
EMPTY_PAGES = 1000  # empty pages in a row that end a pull as a loop


class PullFailed(RuntimeError):
    """A live pull's server could not be reached, answered with an error, or answered with
    something that is no API response (a login page); the watermark is left as it was.
    ``status``: the HTTP status of an answer that said no (None where none came)."""

    status: int | None = None


class EndpointMissing(PullFailed):
    """The server answered 404 or 501 for an endpoint (``where`` names it). ``answered`` is the
    status line; ``says`` and ``error`` the ``message`` and ``error`` of a JSON error body (a
    Langfuse server that has the route but refuses it names why there)."""

    def __init__(
        self, message: str, where: str, answered: str, says: str | None, error: str | None
    ) -> None:
        super().__init__(message)
        self.where, self.answered, self.says, self.error = where, answered, says, error


class CursorLoop(PullFailed):
    """The server gave a cursor it had given before: paging would never end (a saved cursor
    would only repeat it)."""


class KeysRefused(MissingCredentials):
    """401/403: the caller says which keys were sent and where each came from."""


def project_identity(client: Any, public_key: str, hint: str) -> str:
    """Which project the keys read (``GET /api/public/projects``): the same server URL serves
    every project of a Langfuse instance (Cloud, a shared self-hosted one), and only the keys
    choose the project, so a mirror and its watermark must be per project. A server without
    the endpoint gets the public key's digest instead (not secret; a new key pair then pulls
    everything once more)."""
    try:
        page = get_page(client, "/api/public/projects", {}, hint)
    except EndpointMissing:
        page = {}
    projects = [p for p in page.get("data") or [] if isinstance(p, dict) and p.get("id")]
    if len(projects) == 1:
        return f"project:{projects[0]['id']}"
    return "key:" + hashlib.sha256(public_key.encode()).hexdigest()[:16]


def cursor_pages(
    client: Any,
    path: str,
    params: dict[str, Any],
    hint: str,
    cursor: str | None = None,
    first: int = 1,
) -> Any:
    """The pages of ``path`` following ``meta.cursor`` until a page has none; a cursor seen
    before (a proxy or cache that drops the query string answers page one forever) fails
    instead of filling the mirror's disk with copies of it. An empty page with a cursor is no
    end: v3 scores drop rows that fail the server's validation after the cursor was made, so
    stopping there skipped the older scores while the watermark moved past them. ``cursor``
    and ``first``: a stopped pull's saved cursor and the number of the page it reads
    (``pull_resume``). ``EMPTY_PAGES`` empty pages in a row fail too (a real Langfuse makes
    each cursor from its last row read, so it cannot loop there; a broken proxy can)."""
    seen, n, empty = {cursor} if cursor else set(), first - 1, 0
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = get_page(client, path, query, hint)
        n += 1
        yield page
        cursor = (page.get("meta") or {}).get("cursor")
        if not cursor:
            return
        empty = 0 if page.get("data") else empty + 1
        if empty >= EMPTY_PAGES:
            raise PullFailed(
                f"Langfuse pull: {describe_request(client, path)} answered "
                f"{empty} empty pages in a row, "
                f"each with a new cursor (up to page {n}): paging would never end. {hint}"
            )
        if cursor in seen:
            raise CursorLoop(
                f"Langfuse pull: {describe_request(client, path)} answered "
                f"page {n} with a cursor it had "
                f"already given ({str(cursor)[:40]!r}): paging would never end (a proxy or cache "
                f"in front of the API that drops the query string?). {hint}"
            )
        seen.add(cursor)


def server_version(client: Any) -> str | None:
    """The version ``GET /api/public/health`` names (no keys needed), for error messages only:
    a server without it, slow or odd, gives None, never an error."""
    try:
        version = client.get("/api/public/health", timeout=5.0).json().get("version")
    except Exception:  # noqa: BLE001 - a hint in a message that is raised anyway
        return None
    return _one_line(version, 40) if isinstance(version, str) and version.strip() else None


def get_page(client: Any, path: str, params: dict[str, Any], hint: str) -> dict[str, Any]:
    """One API page, retried as the module says; ``KeysRefused`` for 401/403."""
    import httpx

    where = describe_request(client, path)
    failures = limited = 0
    waited = 0.0
    while True:
        try:
            response = client.get(path, params=params)
        except httpx.TransportError as exc:
            failures += 1
            # a URL without http(s):// fails the same way every time
            if failures == RETRIES or isinstance(exc, httpx.UnsupportedProtocol):
                raise PullFailed(
                    f"Langfuse pull: cannot reach {where}: {type(exc).__name__}: "
                    f"{exc or 'no detail'} ({failures} tries). {hint}"
                ) from exc
            delay = _backoff(failures)
        else:
            status = response.status_code
            if status in (401, 403):
                raise KeysRefused(f"Langfuse at {where} refused the credentials ({status})")
            if status == 429:
                limited += 1
                delay = _retry_after(response) or _backoff(limited)
                if waited + delay > RATE_LIMIT_WAIT_S:
                    raise PullFailed(_rate_limited(where, limited, waited, delay))
            elif status in RETRIED_STATUS and failures + 1 < RETRIES:
                failures += 1
                delay = min(_retry_after(response) or _backoff(failures), 30.0)
            else:
                return _page(response, where, hint, failures + 1)
        time.sleep(delay)
        waited += delay


def describe_request(client: Any, path: str) -> str:
    """``<base URL> (GET <path>)``: how messages name a request."""
    return f"{str(client.base_url).rstrip('/')} (GET {path})"


def _backoff(n: int) -> float:
    return float(min(2 ** (n - 1), 10))


def _retry_after(response: Any) -> float | None:
    """The wait a 429/503 asks for: ``Retry-After`` in seconds or as an HTTP date."""
    value = (response.headers.get("retry-after") or "").strip()
    if not value:
        return None
    with suppress(ValueError):
        return max(float(value), 0.0)
    with suppress(TypeError, ValueError, IndexError):
        moment = parsedate_to_datetime(value)
        return max((moment - datetime.now(UTC)).total_seconds(), 0.0)
    return None


def _rate_limited(where: str, times: int, waited: float, delay: float) -> str:
    return (
        f"Langfuse pull: {where} is rate limited (429 Too Many Requests, {times} times; waited "
        f"{waited:.0f} s, it asks for {delay:.0f} s more, over the {RATE_LIMIT_WAIT_S:.0f} s a "
        "request may wait). What was read completely keeps its watermark, so the next run goes "
        "on from there; ask Langfuse for a higher API limit or run the pull more often"
    )


def _page(response: Any, where: str, hint: str, tries: int) -> dict[str, Any]:
    """The JSON page of a response that will not be retried, or ``PullFailed`` saying why it
    is none."""
    status, page = response.status_code, None
    if status < 300:
        with suppress(ValueError):  # not JSON: said below
            page = response.json()
        if isinstance(page, dict) and isinstance(page.get("data", []), list):
            return page
    body = _snippet(redact_response_text(response))  # a proxy may echo the Basic auth
    said = f"{status} {response.reason_phrase}".strip()
    if status in (404, 501):
        says, error = _error_body(response)
        quoted = f"; it says {says!r}" if says else ""
        why = f"the server does not implement this endpoint{quoted}"
        if status == 404:  # its own words: a proxy's, or a Langfuse's that has no such route
            root = "the base URL is the server's root, without /api/public"
            why = f"no Langfuse API there ({root}{quoted})"
        raise EndpointMissing(
            f"Langfuse pull: {where} answered {said}: {why}. {hint}", where, said, says, error
        )
    if 300 <= status < 400:
        where_to = redact_response_text(response, response.headers.get("location") or "nowhere")
        why = f"a redirect to {where_to} (a login page or proxy in front of the API?)"
    elif status >= 400:
        why = (f"{tries} times, " if tries > 1 else "") + body
    elif page is None:
        kind = response.headers.get("content-type") or "no content type"
        why = f"a body that is no JSON ({kind}: {body}; a login page or proxy?)"
    else:
        why = f"JSON that is no API page (no `data` list): {body}"
    failed = PullFailed(f"Langfuse pull: {where} answered {said}: {why}. {hint}")
    failed.status = status  # a 400 on a saved cursor restarts the kind (``pull_resume``)
    raise failed


def _error_body(response: Any) -> tuple[str | None, str | None]:
    """``message`` and ``error`` of a JSON error body (Langfuse: ``{"message": "...", "error":
    "LangfuseNotFoundError"}``), on one line and cut short; None where absent."""
    try:
        body = response.json()
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    message, error = body.get("message"), body.get("error")
    says = redact_response_text(response, message) if isinstance(message, str) else None
    return (
        _one_line(says, 300) if says and says.strip() else None,
        _one_line(error, 60) if isinstance(error, str) and error.strip() else None,
    )


def _one_line(text: str, most: int) -> str:
    flat = " ".join(text.split())
    return flat[:most] + ("..." if len(flat) > most else "")


def _snippet(text: str) -> str:
    """The start of a response body on one line (error pages can be long HTML)."""
    flat = " ".join(text.split())
    return repr(flat[:160] + ("..." if len(flat) > 160 else "")) if flat else "an empty body"
