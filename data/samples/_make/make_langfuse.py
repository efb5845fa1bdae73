"""Regenerate the Langfuse sample export under data/samples/langfuse/.

Run in a scratch venv with the real SDK (NOT the project venv):

    python3 -m venv /tmp/lfvenv
    /tmp/lfvenv/bin/pip install langfuse==5.0.4
    /tmp/lfvenv/bin/python data/samples/_make/make_langfuse.py

Writes (overwriting) the response bodies of

    GET /api/public/v2/observations?type=GENERATION&limit=20
        &fields=core,basic,time,io,metadata,model,usage,prompt,metrics,trace_context
        -> observations-page-1.json, observations-page-2.json (second request adds &cursor=<meta.cursor>)
    GET /api/public/v3/scores?limit=50&fields=details,annotation,subject
        -> scores-page-1.json, scores-page-2.json

The rows are hand-built here in the wire shape of the Langfuse server (web/src/pages/api/public/
v2/observations/index.ts, packages/shared/src/server/repositories/observations_converters.ts and
scores.ts `scoreDomainToV3`, langfuse/langfuse HEAD 6275144, Aug 2026): key order, ISO timestamps
with milliseconds, `input`/`output` as raw JSON strings, cursors (observations: base64 of
{"lastStartTimeTo","lastTraceId","lastId"}; scores: base64url of {"v":1,"lastTimestamp","lastId"}),
newest first. `input`/`output` strings are produced by the SDK's own serializer for observation
input/output (`langfuse._client.attributes._serialize`, i.e. json.dumps with ASCII escapes).

Checked with the package itself: every page is parsed by langfuse 5.0.4's pydantic models
(ObservationsV2Response, GetScoresV3Response), and the SDK's generated REST client
(`LangfuseAPI.observations.get_many`, `.scores.get_many`) is run against the pages through an
httpx.MockTransport, following the cursors to the end.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

import httpx
from langfuse._client.attributes import _serialize
from langfuse._version import __version__ as LANGFUSE_VERSION
from langfuse.api import GetScoresV3Response, ObservationsV2Response
from langfuse.api.client import LangfuseAPI
from langfuse.api.core.pydantic_utilities import parse_obj_as  # what the generated client uses

sys.path.insert(0, str(Path(__file__).resolve().parent))
import content  # noqa: E402

assert LANGFUSE_VERSION == "5.0.4", f"needs langfuse==5.0.4, found {LANGFUSE_VERSION}"

OUT_DIR = Path(__file__).resolve().parents[1] / "langfuse"
OBS_LIMIT = 20
SCORE_LIMIT = 50
OBS_FIELDS = "core,basic,time,io,metadata,model,usage,prompt,metrics,trace_context"
SCORE_FIELDS = "details,annotation,subject"

PROJECT_ID = content.stable_cuid("langfuse-project", "stadtwerke-support")
MODEL = "support-de-lora-v3"  # LoRA adapter name served by vLLM; no price definition in Langfuse
MODEL_PARAMETERS = {"temperature": 0.3, "max_tokens": 128}
PROMPT_NAME = "support-system-de"
RELEASE_BEFORE, RELEASE_AFTER = "2026.10.2", "2026.10.3"  # deployed on 2026-10-16
SUPPORT_AGENTS = {  # Langfuse users who annotate in the "support-review" queue
    "sabine.keller": content.stable_cuid("langfuse-user", "sabine.keller"),
    "jonas.brandt": content.stable_cuid("langfuse-user", "jonas.brandt"),
}
REVIEW_QUEUE_ID = content.stable_cuid("langfuse-queue", "support-review")
CONFIG_HELPFULNESS = content.stable_cuid("langfuse-score-config", "helpfulness")
CONFIG_TONE = content.stable_cuid("langfuse-score-config", "tone")


def frac(*parts: str) -> float:
    """Deterministic number in [0, 1)."""
    return int(hashlib.sha256("/".join(parts).encode()).hexdigest()[:8], 16) / 2**32


def iso(dt: datetime) -> str:
    """JavaScript Date.toISOString(): millisecond precision, 'Z'."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def ms(seconds: float) -> timedelta:
    return timedelta(milliseconds=round(seconds * 1000))


def tokens(text: str, chars_per_token: float) -> int:
    return max(1, round(len(text) / chars_per_token))


def build_observation(g: dict) -> dict:
    key = g["key"]
    start = datetime.fromisoformat(f"2026-10-{g['day']:02d}T{g['time']}+00:00") + ms(
        frac(key, "ms")
    )
    ttft = round(0.22 + 0.4 * frac(key, "ttft"), 3)
    latency = round(1.1 + 2.6 * frac(key, "latency"), 3)
    if g["level"] == "WARNING":
        latency = round(latency + 2.5, 3)
    end = start + ms(latency)
    created = end + ms(0.8 + frac(key, "created"))
    version = 3 if g["day"] <= 15 else 4
    messages = [{"role": "system", "content": content.SYSTEM_PROMPT}]
    messages += [{"role": role, "content": text} for role, text in g["history"]]
    messages.append({"role": "user", "content": g["prompt"]})
    output = {"role": "assistant", "content": g["answer"]}
    n_in = sum(tokens(m["content"], 3.6) + 4 for m in messages)
    n_out = (
        MODEL_PARAMETERS["max_tokens"]
        if g["status_message"] == "finish_reason=length"
        else tokens(g["answer"], 3.4)
    )
    return {
        # core
        "id": content.stable_hex(16, "langfuse-generation", key),
        "traceId": content.stable_hex(32, "langfuse-trace", key),
        "startTime": iso(start),
        "endTime": iso(end),
        "projectId": PROJECT_ID,
        "parentObservationId": content.stable_hex(16, "langfuse-root-span", key),
        "type": "GENERATION",
        # basic (name .. environment)
        "name": "support-answer",
        "level": g["level"],
        "statusMessage": g["status_message"],
        "version": None,
        "environment": "production",
        # time
        "completionStartTime": iso(start + ms(ttft)),
        "createdAt": iso(created),
        "updatedAt": iso(created),
        # io: raw JSON strings, exactly as the SDK serialized them
        "input": _serialize(messages),
        "output": _serialize(output),
        # metadata
        "metadata": {
            "channel": "kundenportal-chat" if frac(key, "channel") < 0.7 else "app",
            "locale": "de-DE",
        },
        # model
        "model": MODEL,
        "internalModelId": None,
        "modelParameters": MODEL_PARAMETERS,
        # usage
        "usageDetails": {"input": n_in, "output": n_out, "total": n_in + n_out},
        "inputUsage": n_in,
        "outputUsage": n_out,
        "totalUsage": n_in + n_out,
        "costDetails": {},
        "inputCost": None,
        "outputCost": None,
        "totalCost": 0,
        # prompt
        "promptId": content.stable_cuid("langfuse-prompt", PROMPT_NAME, str(version)),
        "promptName": PROMPT_NAME,
        "promptVersion": version,
        "usagePricingTierId": None,
        "usagePricingTierName": None,
        # metrics
        "latency": latency,
        "timeToFirstToken": ttft,
        # basic (trace-level, from the events table)
        "userId": g["user"],
        "sessionId": g["session"],
        "isRootObservation": False,
        # trace_context
        "traceName": "support-chat",
        "release": RELEASE_BEFORE if g["day"] < 16 else RELEASE_AFTER,
        "tags": ["kundenservice", "de"],
        "bookmarked": key in ("L05", "L27"),
        "public": False,
        # model price enrichment: always present in v2, null without a matched model
        "modelId": None,
        "inputPrice": None,
        "outputPrice": None,
        "totalPrice": None,
    }


HELPFULNESS_COMMENTS = [
    (0.8, "Korrekt, vollständig und im geforderten Stil."),
    (0.6, "Im Kern richtig, aber unvollständig."),
    (0.3, "Teilweise falsch oder nicht auf Deutsch."),
    (0.0, "Falsch oder nicht hilfreich."),
]


def build_scores(g: dict, obs: dict) -> list[dict]:
    key = g["key"]
    end = datetime.fromisoformat(obs["endTime"].replace("Z", "+00:00"))
    on_obs = {"kind": "observation", "id": obs["id"], "traceId": obs["traceId"]}
    on_trace = {"kind": "trace", "id": obs["traceId"]}
    scores = []

    def score(
        kind,
        name,
        data_type,
        value,
        source,
        when,
        *,
        subject=on_obs,
        comment=None,
        config_id=None,
        author=None,
        queue_id=None,
    ):
        created = when + ms(0.05 + 0.3 * frac(key, kind, "created"))
        scores.append(
            {
                "id": content.stable_uuid4("langfuse-score", key, kind),
                "projectId": PROJECT_ID,
                "name": name,
                "dataType": data_type,
                "value": value,
                "source": source,
                "timestamp": iso(when),
                "environment": "production",
                "createdAt": iso(created),
                "updatedAt": iso(created),
                # details
                "comment": comment,
                "configId": config_id,
                "metadata": {},
                # annotation
                "authorUserId": author,
                "queueId": queue_id,
                # subject
                "subject": subject,
            }
        )

    if g["thumbs"] is not None:
        score(
            "thumbs",
            "user-feedback",
            "BOOLEAN",
            g["thumbs"],
            "API",
            end + ms(8 + 70 * frac(key, "thumbs")),
            subject=on_trace if g["thumbs_on"] == "trace" else on_obs,
            comment=g["comment"],
        )
    if g["helpfulness"] is not None:
        comment = next(
            text for threshold, text in HELPFULNESS_COMMENTS if g["helpfulness"] >= threshold
        )
        score(
            "helpfulness",
            "helpfulness",
            "NUMERIC",
            g["helpfulness"],
            "EVAL",
            end + ms(95 + 200 * frac(key, "eval")),
            comment=comment,
            config_id=CONFIG_HELPFULNESS,
        )
    agent = "sabine.keller" if frac(key, "agent") < 0.5 else "jonas.brandt"
    review = end + timedelta(
        days=2, hours=int(1 + 6 * frac(key, "review-h")), minutes=int(59 * frac(key, "m"))
    )
    if g["correction"] is not None:
        score(
            "correction",
            "output",
            "CORRECTION",
            g["correction"],
            "ANNOTATION",
            review,
            author=SUPPORT_AGENTS[agent],
            queue_id=REVIEW_QUEUE_ID,
        )
    if g["tone"] is not None:
        score(
            "tone",
            "tone",
            "CATEGORICAL",
            g["tone"],
            "ANNOTATION",
            review + ms(41 + 30 * frac(key, "tone")),
            config_id=CONFIG_TONE,
            author=SUPPORT_AGENTS[agent],
            queue_id=REVIEW_QUEUE_ID,
        )
    return scores


def b64_json(obj: dict, urlsafe: bool) -> str:
    raw = json.dumps(obj, separators=(",", ":")).encode()  # JSON.stringify
    if urlsafe:  # Buffer.toString("base64url"): no padding
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return base64.b64encode(raw).decode()


def paginate(rows: list[dict], limit: int, cursor_of, meta_extra: dict) -> list[dict]:
    pages = []
    for start in range(0, len(rows), limit):
        data = rows[start : start + limit]
        has_more = start + limit < len(rows)
        meta = dict(meta_extra)
        if has_more:
            meta["cursor"] = cursor_of(data[-1])
        pages.append({"data": data, "meta": meta})
    return pages


def write_pages(prefix: str, pages: list[dict]) -> list[Path]:
    paths = []
    for n, page in enumerate(pages, start=1):
        path = OUT_DIR / f"{prefix}-page-{n}.json"
        path.write_text(json.dumps(page, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def check_with_sdk(obs_pages: list[dict], score_pages: list[dict]) -> None:
    """Parse every page with the SDK models and walk both endpoints with the SDK's own REST client."""
    for page in obs_pages:
        parsed = parse_obj_as(ObservationsV2Response, page)
        for row, model in zip(page["data"], parsed.data, strict=False):
            assert (
                model.type == "GENERATION"
                and model.trace_id == row["traceId"]
                and model.model == MODEL
            )
            assert isinstance(model.input, str) and isinstance(json.loads(model.input), list)
            assert json.loads(model.output)["role"] == "assistant"
    for page in score_pages:
        parsed = parse_obj_as(GetScoresV3Response, page)
        for row, model in zip(page["data"], parsed.data, strict=False):
            assert model.data_type == row["dataType"] and type(model.value) is type(row["value"]), (
                row["id"]
            )
            assert model.subject.kind == row["subject"]["kind"]

    by_cursor = {
        "observations": {
            None: obs_pages[0],
            **{
                p["meta"]["cursor"]: obs_pages[i + 1]
                for i, p in enumerate(obs_pages)
                if "cursor" in p["meta"]
            },
        },
        "scores": {
            None: score_pages[0],
            **{
                p["meta"]["cursor"]: score_pages[i + 1]
                for i, p in enumerate(score_pages)
                if "cursor" in p["meta"]
            },
        },
    }
    seen_requests = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen_requests.append(str(request.url))
        q = {k: v[0] for k, v in parse_qs(request.url.query.decode()).items()}
        assert request.headers["authorization"].startswith("Basic "), request.headers
        if request.url.path == "/api/public/v2/observations":
            assert (
                q["fields"] == OBS_FIELDS
                and q["type"] == "GENERATION"
                and q["limit"] == str(OBS_LIMIT)
            ), q
            return httpx.Response(200, json=by_cursor["observations"][q.get("cursor")])
        if request.url.path == "/api/public/v3/scores":
            assert q["fields"] == SCORE_FIELDS and q["limit"] == str(SCORE_LIMIT), q
            return httpx.Response(200, json=by_cursor["scores"][q.get("cursor")])
        return httpx.Response(404, json={"message": "not found"})

    api = LangfuseAPI(
        base_url="https://langfuse.invalid",
        username="pk-lf-sample",
        password="sk-lf-sample",
        httpx_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    observations, cursor = [], None
    while True:
        resp = api.observations.get_many(
            fields=OBS_FIELDS, type="GENERATION", limit=OBS_LIMIT, cursor=cursor
        )
        observations += resp.data
        cursor = resp.meta.cursor
        if not cursor:
            break
    scores, cursor = [], None
    while True:
        resp = api.scores.get_many(fields=SCORE_FIELDS, limit=SCORE_LIMIT, cursor=cursor)
        scores += resp.data
        cursor = resp.meta.cursor
        if not cursor:
            break
    assert len(observations) == sum(len(p["data"]) for p in obs_pages)
    assert len(scores) == sum(len(p["data"]) for p in score_pages)
    print("SDK client requests:")
    for url in seen_requests:
        print("  ", url)


def main() -> None:
    observations, scores = [], []
    for g in content.LANGFUSE_GENERATIONS:
        obs = build_observation(g)
        observations.append(obs)
        scores += build_scores(g, obs)
    # newest first, as the server orders them
    observations.sort(key=lambda o: (o["startTime"], o["traceId"], o["id"]), reverse=True)
    scores.sort(key=lambda s: (s["timestamp"], s["id"]), reverse=True)

    obs_pages = paginate(
        observations,
        OBS_LIMIT,
        lambda last: b64_json(
            {
                "lastStartTimeTo": last["startTime"],
                "lastTraceId": last["traceId"],
                "lastId": last["id"],
            },
            urlsafe=False,
        ),
        {},
    )
    score_pages = paginate(
        scores,
        SCORE_LIMIT,
        lambda last: b64_json(
            {"v": 1, "lastTimestamp": last["timestamp"], "lastId": last["id"]}, urlsafe=True
        ),
        {"limit": SCORE_LIMIT},
    )
    check_with_sdk(obs_pages, score_pages)

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for old in OUT_DIR.glob("*-page-*.json"):
        old.unlink()
    written = write_pages("observations", obs_pages) + write_pages("scores", score_pages)
    for path in written:
        print("wrote", path.relative_to(OUT_DIR.parents[2]))


if __name__ == "__main__":
    main()
