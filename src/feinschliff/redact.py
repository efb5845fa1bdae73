"""Credentials out of text that quotes an HTTP response.

A server or a proxy in front of it may echo the request's headers in an error body (a 401's
"Incorrect API key provided: sk-...", a debugging proxy's dump); that body becomes an error
message, which reaches logs, manifests, dataset cards and notifications. Everything a request
authenticated with is replaced: the Authorization header's value, its token, for Basic auth
(Langfuse's public:secret pair) the decoded user and password, and API-key headers.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

HIDDEN = "***"


# headers that carry a credential (Argilla's SDK sends its key in its own header)
KEY_HEADERS = ("x-argilla-api-key", "x-api-key", "api-key")


def credentials_of(request: Any) -> list[str]:
    """The secrets an httpx request carried in its headers, longest first."""
    headers = request.headers if request is not None else {}
    found = {v for h in KEY_HEADERS if len(v := headers.get(h, "")) >= 4}
    value = headers.get("authorization", "")
    found |= {value} if value else set()
    scheme, _, token = value.partition(" ")
    if token:
        found.add(token)
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            found |= {s for s in (user, password) if len(s) >= 4}
    return sorted(found, key=len, reverse=True)


def redact_response_text(response: Any, text: str | None = None) -> str:
    """``text`` (default: the response's body) without the credentials its request sent."""
    try:
        request = response.request
    except RuntimeError:  # a response built without its request (tests, mocks)
        request = None
    return redact_request_credentials(request, response.text if text is None else text)


def redact_request_credentials(request: Any, text: str) -> str:
    """``text`` without the credentials ``request`` (an httpx request, or None) sent."""
    for secret in credentials_of(request):
        text = text.replace(secret, HIDDEN)
    return text
