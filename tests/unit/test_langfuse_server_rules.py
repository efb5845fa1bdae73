"""What the real Langfuse server enforces, and what the live pull does when a server says no.

The rules are read from Langfuse's source (v4.16.0, web/src/pages/api/public and
packages/shared): the v3 scores query is a strict schema (an unknown parameter is a 400
``{"message": "Invalid request data", "error": [...]}``), its ``limit`` is 1..100, the v2
observations ``limit`` at most 1000 and their ``type`` a case-sensitive enum. The fake server of
``test_ingest_live`` applies ``invalid_query``, so every pull against it proves its queries
valid. A self-hosted v3 answers the v2 observations route with 404 and the body
``V3_OBSERVATIONS_404`` (v3.143 to v3.158: 501); v3 scores drop rows that fail validation after
the page's cursor was made, so a page can be empty and still have a cursor.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import httpx
import pytest

from feinschliff.ingest.langfuse_http import EndpointMissing, PullFailed, cursor_pages, get_page
from feinschliff.recipe import FeedbackSpec

SCORE_PARAMS = frozenset(
    [
        "limit",
        "fields",
        "cursor",
        "id",
        "name",
        "source",
        "dataType",
        "environment",
        "configId",
        "queueId",
        "authorUserId",
        "value",
        "valueMin",
        "valueMax",
        "traceId",
        "sessionId",
        "observationId",
        "experimentId",
        "fromTimestamp",
        "toTimestamp",
    ]
)  # userId and traceTags are known but always refused by v3 ("use v2")
SCORE_FIELDS = frozenset(["core", "details", "subject", "annotation"])
OBSERVATION_TYPES = frozenset(
    [
        "GENERATION",
        "SPAN",
        "EVENT",
        "AGENT",
        "TOOL",
        "CHAIN",
        "RETRIEVER",
        "EVALUATOR",
        "EMBEDDING",
        "GUARDRAIL",
    ]
)
V3_OBSERVATIONS_404 = {  # v3.179 on, without LANGFUSE_MIGRATION_V4_ALLOW_PREVIEW_OPT_IN=true
    "message": "The observations v2 API is only available in a Langfuse v4 write mode. Learn "
    "more at: https://langfuse.com/docs/v4",
    "error": "LangfuseNotFoundError",
}


def invalid_query(path: str, query: dict[str, str]) -> list[str]:
    """The issues the real server's query schema finds (its 400 answer); none: valid."""
    issues: list[str] = []
    if path == "/api/public/v3/scores":
        issues += [f"unrecognized key {k!r}" for k in sorted(set(query) - SCORE_PARAMS)]
        fields = [f for f in query.get("fields", "").split(",") if f]
        issues += [f"fields: no group {f!r}" for f in fields if f not in SCORE_FIELDS]
        low, high, stamps = 1, 100, ("fromTimestamp", "toTimestamp")
    elif path == "/api/public/v2/observations":
        if query.get("type", "GENERATION") not in OBSERVATION_TYPES:
            issues.append(f"type: invalid enum value {query['type']!r}")
        low, high, stamps = 0, 1000, ("fromStartTime", "toStartTime")
    else:
        return issues
    limit = query.get("limit", "50")
    if not (limit.isdigit() and low <= int(limit) <= high):
        issues.append(f"limit: {limit!r} is not in {low}..{high}")
    for key in (k for k in stamps if k in query):
        try:
            datetime.fromisoformat(query[key].replace("Z", "+00:00"))
        except ValueError:
            issues.append(f"{key}: invalid date {query[key]!r}")
    return issues


# --------------------------------------------------------------------------- the fake's rules


def _live() -> Any:  # imported late: test_ingest_live imports this module's rules
    from tests.unit import test_ingest_live

    return test_ingest_live


@pytest.fixture()
def lf(monkeypatch, home):
    live = _live()
    with live.serving() as srv:
        live.use_keys(monkeypatch, srv, live.PUBLIC, live.SECRET)
        monkeypatch.setattr("feinschliff.ingest.langfuse_http.time.sleep", lambda s: None)
        yield srv


@pytest.mark.parametrize(
    ("path", "query", "issue"),
    [
        ("/api/public/v3/scores", {"type": "GENERATION"}, "unrecognized key 'type'"),
        ("/api/public/v3/scores", {"limit": "101"}, "limit: '101'"),
        ("/api/public/v3/scores", {"limit": "0"}, "limit: '0'"),
        ("/api/public/v3/scores", {"fields": "core,io"}, "no group 'io'"),
        ("/api/public/v2/observations", {"limit": "1001"}, "limit: '1001'"),
        ("/api/public/v2/observations", {"type": "generation"}, "invalid enum value 'generation'"),
        ("/api/public/v2/observations", {"fromStartTime": "yesterday"}, "invalid date"),
    ],
)
def test_the_fake_refuses_what_langfuse_refuses(lf, path, query, issue):
    live = _live()
    with httpx.Client(base_url=lf.url, auth=(live.PUBLIC, live.SECRET)) as client:
        answer = client.get(path, params=query)
        assert answer.status_code == 400, answer.text
        body = answer.json()
        assert body["message"] == "Invalid request data"
        assert any(issue in said for said in body["error"]), body
        assert client.get(path, params={"limit": "100"}).status_code == 200


def test_a_pull_with_every_filter_sends_queries_langfuse_accepts(lf, tmp_path):
    """Name, environment and the largest page: the scores get at most 100 and no observation
    filter (their strict schema refuses ``type`` and ``name``)."""
    live = _live()
    for row in lf.tables["observations"] + lf.tables["scores"]:
        row["environment"] = "production"
    live.run_ingest(
        live.pull_spec(page_limit=1000, environment="production", name="support-answer"),
        tmp_path / "out",
    )
    asked = {path for path, _ in lf.requests}
    assert {"/api/public/v2/observations", "/api/public/v3/scores"} <= asked
    assert all(not invalid_query(path, query) for path, query in lf.requests)
    scores = [q for p, q in lf.requests if p.endswith("scores")]
    assert scores[0]["limit"] == "100" and scores[0]["environment"] == "production"


def test_an_observation_type_in_lower_case_is_a_recipe_error():
    """``generation`` passed validation and was a 400 at pull time."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"observation_type\n  Input should be 'GENERATION'"):
        FeedbackSpec.model_validate(
            {"sources": [{"kind": "langfuse", "pull": {"observation_type": "generation"}}]}
        )
    spec = FeedbackSpec.model_validate(
        {"sources": [{"kind": "langfuse", "pull": {"observation_type": "SPAN"}}]}
    )
    assert spec.sources[0].pull.observation_type == "SPAN"


def test_validate_names_the_recipe_path_of_a_wrong_observation_type():
    from tests.cli_helpers import run_cli

    recipe = str(_live().ROOT / "recipes" / "demo-de.yaml")
    sources = "feedback.sources=[{kind: langfuse, pull: {observation_type: generation}}]"
    code, said = run_cli("validate", recipe, "--set", sources)
    assert code == 2 and "observation_type" in said and "GENERATION" in said, said


# --------------------------------------------------------------------------- servers saying no


def test_a_self_hosted_v3_server_is_named_not_a_wrong_base_url(lf, tmp_path):
    """A v3 server with default settings answers the v2 observations with 404 and says why;
    the pull said "no Langfuse API there (check the base URL)" and dropped the server's words,
    though the projects endpoint had just answered on the same base URL. (This fake serves no
    older route either, so the page-based fallback fails too: test_langfuse_legacy_pull.)"""
    live = _live()
    lf.langfuse_v3 = True
    with pytest.raises(live.IngestError) as caught:
        live.run_ingest(live.pull_spec(), tmp_path / "out")
    message = str(caught.value)
    assert "(GET /api/public/v2/observations) answered 404 Not Found" in message
    assert "only available in a Langfuse v4 write mode" in message  # the server's own words
    assert "Langfuse 3.172.0" in message  # from GET /api/public/health
    assert "Langfuse Cloud" in message and "v4 or later" in message
    assert "LANGFUSE_MIGRATION_V4_ALLOW_PREVIEW_OPT_IN=true" in message
    assert "without /api/public" not in message and "\n" not in message


def test_langfuse_s_own_404_body_is_enough_to_tell(lf, tmp_path):
    """Without the projects endpoint (a proxy that passes only some routes), Langfuse's 404 body
    still shows the server is one; another JSON 404 does not (below: a wrong base URL)."""
    live = _live()
    lf.langfuse_v3, lf.faults = True, [("projects", 404, {})]
    with pytest.raises(live.IngestError) as caught:
        live.run_ingest(live.pull_spec(), tmp_path / "out")
    assert "Langfuse 3.172.0 does not serve this API" in str(caught.value)


def test_the_cli_says_so_in_one_line(lf, tmp_path):
    from tests.cli_helpers import run_cli

    live = _live()
    lf.langfuse_v3 = True
    sources = f'feedback.sources=[{{kind: langfuse, pull: {{base_url: "{lf.url}"}}}}]'
    code, said = run_cli(
        "ingest", str(live.ROOT / "recipes" / "demo-de.yaml"), "--out", str(tmp_path / "o"),
        "--set", sources, "--pii", "off",
    )  # fmt: skip
    assert code == 1 and "Traceback" not in said
    assert "LANGFUSE_MIGRATION_V4_ALLOW_PREVIEW_OPT_IN=true" in said


def test_a_501_for_the_observations_is_named_the_same_way(lf, tmp_path):
    """Langfuse v3.143 to v3.158 answered 501 Not Implemented: no wrong URL either."""
    live = _live()
    lf.faults = [("observations", 501, {})]
    with pytest.raises(live.IngestError) as caught:
        live.run_ingest(live.pull_spec(), tmp_path / "out")
    message = str(caught.value)
    assert "answered 501 Not Implemented ('fault')" in message
    assert "Langfuse 4.16.0 does not serve this API" in message and "Langfuse Cloud" in message


def test_a_health_endpoint_that_fails_is_no_error(lf, tmp_path, monkeypatch):
    """The version is a hint: a server whose health check hangs or errs still gets its message."""
    live = _live()
    lf.faults = [("observations", 404, {})]
    real_get = httpx.Client.get

    def failing_health(self, url, **kwargs):
        if str(url).endswith("/health"):
            raise httpx.ReadTimeout("slow")
        return real_get(self, url, **kwargs)

    monkeypatch.setattr(httpx.Client, "get", failing_health)
    with pytest.raises(live.IngestError) as caught:
        live.run_ingest(live.pull_spec(), tmp_path / "out")
    assert "this Langfuse does not serve this API" in str(caught.value)


def test_a_wrong_base_url_keeps_its_wording_and_adds_the_servers_words(lf, tmp_path):
    """Where the projects endpoint 404s too, the base URL is the likely cause."""
    live = _live()
    other_app = {"message": "fault", "error": "Not Found"}
    lf.faults = [("projects", 404, {}), ("observations", 404, {}, other_app)]
    with pytest.raises(live.IngestError) as caught:
        live.run_ingest(live.pull_spec(), tmp_path / "out")
    message = str(caught.value)
    assert (
        "answered 404 Not Found: no Langfuse API there (the base URL is the server's root, "
        "without /api/public; it says 'fault'). Check the server URL"
    ) in message, message


def test_a_server_without_v3_scores_names_the_release_that_has_them(lf, tmp_path):
    """v3 scores came with Langfuse v3.180.0; v3.179.x had them only behind a variable."""
    live = _live()
    lf.faults = [("scores", 404, {})]
    with pytest.raises(live.IngestError) as caught:
        live.run_ingest(live.pull_spec(), tmp_path / "out")
    message = str(caught.value)
    assert "has no v3 scores API (self-hosted Langfuse has it from v3.180.0" in message
    assert "LANGFUSE_ENABLE_SCORES_V3_API=true" in message and "('fault')" in message
    assert "older v2 scores API either (v3.53.0 on)" in message


def test_a_404_body_is_quoted_short_and_on_one_line():
    long = "line one\nline two " + "x" * 1000

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"message": long, "error": "LangfuseNotFoundError"})

    client = httpx.Client(base_url="http://lf", transport=httpx.MockTransport(answer))
    with client, pytest.raises(EndpointMissing) as caught:
        get_page(client, "/api/public/v2/observations", {}, "hint")
    exc = caught.value
    assert exc.error == "LangfuseNotFoundError" and exc.answered == "404 Not Found"
    assert exc.says is not None and exc.says.startswith("line one line two x")
    assert len(exc.says) <= 303 and "\n" not in str(exc)


# --------------------------------------------------------------------------- paging


def test_an_empty_scores_page_with_a_cursor_is_no_end(lf, tmp_path):
    """The server drops scores that fail its validation after it made the page's cursor: the
    pull stopped at such a page and its watermark passed the older scores, never pulled."""
    live = _live()
    lf.dropped = {s["id"] for s in lf.tables["scores"][7:14]}  # all of page 2 (7 a page)
    out = live.run_ingest(live.pull_spec(), tmp_path / "out")
    pulled = json.loads((out.dir / "manifest.json").read_text())["sources"][0]["pull"]
    assert pulled["fetched"]["scores"] == len(lf.tables["scores"]) - 7
    assert len([p for p, _ in lf.requests if p.endswith("scores")]) > 2


def _pages(answers: list[dict[str, Any]]) -> httpx.Client:
    left = list(answers)

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=left.pop(0) if len(left) > 1 else left[0])

    return httpx.Client(base_url="http://lf", transport=httpx.MockTransport(answer))


def test_empty_pages_that_repeat_their_cursor_end_with_an_error():
    """Following empty pages must not loop: the same cursor again fails as a stuck proxy does."""
    client = _pages([{"data": [], "meta": {"cursor": "same"}}])
    with client, pytest.raises(PullFailed, match="with a cursor it had already given"):
        for _ in cursor_pages(client, "/api/public/v3/scores", {}, "hint"):
            pass


def test_paging_ends_at_the_first_page_without_a_cursor():
    answers = [
        {"data": [], "meta": {"cursor": "a"}},
        {"data": [{"id": "1"}], "meta": {"cursor": "b"}},
        {"data": [{"id": "2"}], "meta": {}},
        {"data": [{"id": "never asked"}], "meta": {}},
    ]
    with _pages(answers) as client:
        pages = list(cursor_pages(client, "/api/public/v3/scores", {}, "hint"))
    assert [row["id"] for page in pages for row in page["data"]] == ["1", "2"]


def test_observations_are_asked_only_for_the_field_groups_the_ingest_reads(lf, tmp_path):
    """The pull asked for every group: ``model`` costs the server a Postgres lookup per page,
    ``metadata`` (truncated to 200 characters, free-form, PII) and cost/latency/usage were
    stored in the mirror and made a row "changed" (a new stored version) whenever only they
    moved. The ingest reads id, traceId, type, startTime (core), userId (basic), updatedAt
    (time) and input/output (io)."""
    live = _live()
    live.run_ingest(live.pull_spec(), tmp_path / "out")
    (first, *_) = [q for p, q in lf.requests if p == "/api/public/v2/observations"]
    assert set(first["fields"].split(",")) == {"core", "basic", "time", "io"}
