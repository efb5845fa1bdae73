"""What a live Langfuse pull says when the server lacks one of the two APIs it reads.

The pull reads ``GET /api/public/v2/observations`` and ``GET /api/public/v3/scores``, or their
page-based predecessors where a Langfuse lacks them (``pull_legacy``); these messages come only
when the predecessor failed too. Langfuse Cloud and self-hosted Langfuse v4 serve both. A
self-hosted v3 answers the observations route with 404 (v3.159 on; v3.143 to v3.158: 501)
unless ``LANGFUSE_MIGRATION_V4_ALLOW_PREVIEW_OPT_IN`` is true, and has v3 scores from v3.180.0
(v3.179.x only with ``LANGFUSE_ENABLE_SCORES_V3_API``). Such a 404 is no wrong base URL, so the
message says what the server lacks, in its own words.
"""

from __future__ import annotations

from typing import Any

from feinschliff.ingest.langfuse_http import EndpointMissing, PullFailed, server_version

LANGFUSE_404 = "LangfuseNotFoundError"  # the `error` of Langfuse's JSON 404 body
OBSERVATIONS_NEED = (
    "the live pull reads the v2 observations API, which Langfuse Cloud and self-hosted Langfuse "
    "v4 or later serve (a self-hosted v3 only with LANGFUSE_MIGRATION_V4_ALLOW_PREVIEW_OPT_IN=true)"
    ", or else the older GET /api/public/observations, which this server did not serve either: "
    "check the base URL and any proxy in front of the server"
)
SCORES_NEED = (
    "this Langfuse has no v3 scores API (self-hosted Langfuse has it from v3.180.0; v3.179.0 and "
    "v3.179.1 only with LANGFUSE_ENABLE_SCORES_V3_API=true) and did not serve the older v2 "
    "scores API either (v3.53.0 on): upgrade the server"
)


def api_missing(client: Any, kind: str, exc: EndpointMissing, project: str) -> PullFailed | None:
    """The error for ``kind``'s endpoint answering 404/501, or None to keep ``exc``. The
    observations are asked first: their 404 is a wrong base URL (as ``exc`` says) unless the
    server showed it is a Langfuse with a route it refuses: a 501, Langfuse's 404 body, or the
    projects endpoint answering on the same base URL (``project``: ``project:<id>``)."""
    said = f" ({exc.says!r})" if exc.says else ""
    if kind == "scores":
        return PullFailed(
            f"Langfuse pull: {exc.where} answered {exc.answered}{said} while the observations "
            f"API on the same server answered: {SCORES_NEED}; the scores' watermark is unchanged"
        )
    refused = (
        exc.answered.startswith("501")
        or exc.error == LANGFUSE_404  # another app's JSON 404 may name an error too
        or project.startswith("project:")
    )
    if not refused:
        return None
    version = server_version(client)
    which = f"Langfuse {version}" if version else "this Langfuse"
    return PullFailed(
        f"Langfuse pull: {exc.where} answered {exc.answered}{said}: {which} does not serve "
        f"this API; {OBSERVATIONS_NEED}; the watermark is unchanged"
    )
