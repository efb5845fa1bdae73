"""Regenerate the Argilla 2.x sample export under data/samples/argilla/.

Run in a scratch venv with the real SDK (NOT the project venv):

    python3 -m venv /tmp/argvenv
    /tmp/argvenv/bin/pip install argilla==2.8.0 requests   # 2.8.0 imports `requests` but does not declare it
    /tmp/argvenv/bin/python data/samples/_make/make_argilla.py

Writes (overwriting):
    data/samples/argilla/feedback-de/.argilla/dataset.json   Dataset.to_disk
    data/samples/argilla/feedback-de/.argilla/settings.json  Dataset.to_disk
    data/samples/argilla/feedback-de/records.json            Dataset.to_disk (= records.to_list(flatten=False))
    data/samples/argilla/feedback-de-flat.jsonl              dataset.records.to_list(flatten=True), one object a line

How: `Dataset.to_disk` can only export a dataset that lives on an Argilla server (it iterates the
records from the server). No server is available here, so the script runs the UNMODIFIED SDK
against a small in-process fake of the Argilla 2.8 REST API (an `httpx.MockTransport` mounted on
the SDK's own httpx client). The fake serves:
  - settings (fields, questions, metadata property) built with rg.Settings and given server ids;
  - records built with rg.Record / rg.Response / rg.Suggestion and serialized for the wire by the
    SDK itself (`Record.api_model()`), plus what the server adds: ids, timestamps, response ids,
    suggestion question_ids, ranking ranks and the record status (overlap distribution,
    min_submitted=1: "completed" once one response is submitted, else "pending").
The response shapes follow argilla-server 2.8.0 (`argilla_server/api/schemas/v1/*.py`).
Then the real SDK calls run: `client.datasets(name=..., workspace=...)`, `ds.to_disk(path)`,
`ds.records.to_list(flatten=True)`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

import argilla as rg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import content  # noqa: E402

assert rg.__version__ == "2.8.0", f"needs argilla==2.8.0, found {rg.__version__}"

SAMPLES = Path(__file__).resolve().parents[1]
OUT_DIR = SAMPLES / "argilla" / "feedback-de"
FLAT_FILE = SAMPLES / "argilla" / "feedback-de-flat.jsonl"

API_URL = "http://argilla.invalid"  # never contacted: every request goes to the fake below
WORKSPACE = "stadtwerke-support"
DATASET = "feedback-de"
WORKSPACE_ID = content.stable_uuid4("argilla-workspace", WORKSPACE)
DATASET_ID = content.stable_uuid4("argilla-dataset", DATASET)
OWNER_ID = content.stable_uuid4("argilla-user", "owner")

T0 = datetime(2026, 10, 5, 8, 12, 33, 412000)  # dataset created (Argilla stores naive UTC)


def ts(dt: datetime) -> str:
    return dt.isoformat()


GUIDELINES = (
    "Bewerten Sie Antworten des Kundenservice der Stadtwerke Feinschliff. Gute Antworten sind korrekt, "
    "freundlich, auf Deutsch, höchstens drei Sätze lang und beginnen mit „Gerne helfe ich Ihnen:“.\n\n"
    "- rating: Qualität von Antwort A (1 = unbrauchbar, 5 = perfekt).\n"
    "- preference / ranking: Welche der beiden Antworten ist besser?\n"
    "- corrected_answer: Optional eine korrigierte Fassung von Antwort A im Stil des Kundenservice."
)


def build_settings() -> rg.Settings:
    return rg.Settings(
        guidelines=GUIDELINES,
        fields=[
            rg.TextField(name="prompt", title="Kundenanfrage"),
            rg.TextField(name="response_a", title="Antwort A"),
            rg.TextField(name="response_b", title="Antwort B"),
        ],
        questions=[
            rg.RatingQuestion(
                name="rating", title="Wie gut ist Antwort A?", values=[1, 2, 3, 4, 5], required=True
            ),
            rg.LabelQuestion(
                name="preference",
                title="Welche Antwort ist besser?",
                labels={"response_a": "Antwort A", "response_b": "Antwort B", "tie": "Gleich gut"},
                required=False,
            ),
            rg.RankingQuestion(
                name="ranking",
                title="Ordnen Sie die Antworten (beste zuerst)",
                values={"response_a": "Antwort A", "response_b": "Antwort B"},
                required=False,
            ),
            rg.TextQuestion(
                name="corrected_answer",
                title="Korrigierte Antwort A (optional)",
                use_markdown=True,
                required=False,
            ),
        ],
        metadata=[
            rg.TermsMetadataProperty(name="source", title="Quelle", options=["langfuse", "manual"]),
        ],
        allow_extra_metadata=True,
        distribution=rg.TaskDistribution(min_submitted=1),
    )


def build_records(dataset: rg.Dataset) -> list[rg.Record]:
    records = []
    for item in content.ARGILLA_RECORDS:
        responses = []
        for a in item["annotations"]:
            for question, value in a["values"].items():
                responses.append(
                    rg.Response(
                        question_name=question,
                        value=value,
                        user_id=content.ANNOTATORS[a["user"]],
                        status=a["status"],
                    )
                )
        suggestions = [
            rg.Suggestion(
                question_name=s["question"], value=s["value"], score=s["score"], agent=s["agent"]
            )
            for s in item.get("suggestions", [])
        ]
        metadata = {"source": item["source"]}
        if "langfuse_trace_id" in item:
            metadata["langfuse_trace_id"] = item["langfuse_trace_id"]  # extra metadata (allowed)
        record = rg.Record(
            id=item["id"],
            fields={
                "prompt": item["prompt"],
                "response_a": item["response_a"],
                "response_b": item["response_b"],
            },
            metadata=metadata,
            responses=responses,
            suggestions=suggestions,
        )
        record.dataset = dataset
        records.append(record)
    return records


class FakeArgillaServer:
    """Just enough of the Argilla 2.8 REST API for Datasets.__call__, Dataset.to_disk and records export."""

    def __init__(self, settings: rg.Settings, records: list[rg.Record]):
        self.requests: list[str] = []
        self.user = {
            "id": OWNER_ID,
            "first_name": "Export",
            "last_name": "Bot",
            "username": "export-bot",
            "role": "owner",
            "api_key": "argilla.apikey",
            "inserted_at": ts(T0 - timedelta(days=30)),
            "updated_at": ts(T0 - timedelta(days=30)),
        }
        self.workspace = {
            "id": WORKSPACE_ID,
            "name": WORKSPACE,
            "inserted_at": ts(T0 - timedelta(days=30)),
            "updated_at": ts(T0 - timedelta(days=30)),
        }
        self.dataset = {
            "id": DATASET_ID,
            "name": DATASET,
            "guidelines": settings.guidelines,
            "allow_extra_metadata": settings.allow_extra_metadata,
            "status": "ready",
            "distribution": {"strategy": "overlap", "min_submitted": 1},
            "metadata": None,
            "workspace_id": WORKSPACE_ID,
            "last_activity_at": ts(datetime(2026, 10, 21, 16, 2, 11, 53000)),
            "inserted_at": ts(T0),
            "updated_at": ts(T0 + timedelta(seconds=4, microseconds=118000)),
        }
        serialized = settings.serialize()
        created = ts(T0 + timedelta(seconds=1))

        def server_side(kind: str, item: dict, extra: dict) -> dict:
            return {
                "id": content.stable_uuid4("argilla", kind, item["name"]),
                **extra,
                "dataset_id": DATASET_ID,
                "inserted_at": created,
                "updated_at": created,
            }

        self.fields = [
            server_side(
                "field",
                f,
                {
                    "name": f["name"],
                    "title": f["title"],
                    "required": f["required"],
                    "settings": f["settings"],
                },
            )
            for f in serialized["fields"]
        ]
        self.questions = []
        for q in serialized["questions"]:
            q_settings = dict(q["settings"])
            if "options" in q_settings and q_settings["type"] != "rating":
                # the server returns OptionSettings {value, text, description}
                q_settings["options"] = [
                    {"value": o["value"], "text": o["text"], "description": None}
                    for o in q_settings["options"]
                ]
            self.questions.append(
                server_side(
                    "question",
                    q,
                    {
                        "name": q["name"],
                        "title": q["title"],
                        "description": q["description"],
                        "required": q["required"],
                        "settings": q_settings,
                    },
                )
            )
        self.question_ids = {q["name"]: q["id"] for q in self.questions}
        self.metadata_properties = [
            server_side(
                "metadata",
                m,
                {
                    "name": m["name"],
                    "title": m["title"],
                    "settings": {"type": m["settings"]["type"], "values": m["settings"]["values"]},
                    "visible_for_annotators": m["visible_for_annotators"],
                },
            )
            for m in serialized["metadata"]
        ]
        self.records = [self._server_record(i, r) for i, r in enumerate(records)]
        for record in self.records:
            self._validate(record)

    def _validate(self, record: dict) -> None:
        """The checks argilla-server 2.8 applies to responses (validators/responses.py, response_values.py)."""
        questions = {q["name"]: q for q in self.questions}
        for response in record["responses"]:
            where = f"{record['external_id']} / {response['user_id']}"
            values = response["values"] or {}
            if response["status"] == "submitted":
                for q in questions.values():
                    if q["required"] and q["name"] not in values:
                        raise ValueError(
                            f"{where}: missing response value for required question {q['name']!r}"
                        )
            for name, value in values.items():
                q_settings = questions[name]["settings"]
                options = [o["value"] for o in q_settings.get("options", [])]
                value = value["value"]
                if q_settings["type"] in ("rating", "label_selection") and value not in options:
                    raise ValueError(f"{where}: {name} value {value!r} not in {options}")
                if q_settings["type"] == "ranking":
                    ranked = [v["value"] for v in value]
                    if len(set(ranked)) != len(ranked) or not set(ranked) <= set(options):
                        raise ValueError(f"{where}: invalid ranking {ranked}")
                    if response["status"] == "submitted" and set(ranked) != set(options):
                        raise ValueError(f"{where}: a submitted ranking must rank all of {options}")
                if q_settings["type"] == "text" and not isinstance(value, str):
                    raise ValueError(f"{where}: text question expects a string")

    def _server_record(self, index: int, record: rg.Record) -> dict:
        """Wire form of a record as argilla-server returns it from /records/search."""
        wire = record.api_model().model_dump()  # the SDK's own serialization of the record
        record_id = content.stable_uuid4("argilla-record", record.id)
        inserted = T0 + timedelta(minutes=3, seconds=index * 7)
        responses = []
        for j, response in enumerate(wire["responses"]):
            answered = inserted + timedelta(days=1 + (index % 9), hours=j, minutes=11 * j + index)
            values = {}
            for question, value in (response["values"] or {}).items():
                if question == "ranking":  # the UI stores ranks alongside the values
                    value = {
                        "value": [
                            {"value": v["value"], "rank": k + 1}
                            for k, v in enumerate(value["value"])
                        ]
                    }
                values[question] = value
            responses.append(
                {
                    "id": content.stable_uuid4("argilla-response", record.id, response["user_id"]),
                    "values": values,
                    "status": response["status"].value
                    if hasattr(response["status"], "value")
                    else response["status"],
                    "record_id": record_id,
                    "user_id": response["user_id"],
                    "inserted_at": ts(answered),
                    "updated_at": ts(answered + timedelta(seconds=40 + j)),
                }
            )
        suggestions = []
        for s in wire["suggestions"]:
            value = s["value"]
            suggestions.append(
                {
                    "id": content.stable_uuid4("argilla-suggestion", record.id, s["question_name"]),
                    "question_id": self.question_ids[s["question_name"]],
                    "type": s["type"] or "model",
                    "value": value,
                    "agent": s["agent"],
                    "score": s["score"],
                    "inserted_at": ts(inserted),
                    "updated_at": ts(inserted),
                }
            )
        submitted = sum(1 for r in responses if r["status"] == "submitted")
        return {
            "id": record_id,
            "status": "completed" if submitted >= 1 else "pending",
            "fields": wire["fields"],
            "metadata": wire["metadata"],
            "external_id": wire["external_id"],
            "responses": responses,
            "suggestions": suggestions,
            "vectors": {},
            "dataset_id": DATASET_ID,
            "inserted_at": ts(inserted),
            "updated_at": ts(
                max([inserted] + [datetime.fromisoformat(r["updated_at"]) for r in responses])
            ),
        }

    def __call__(self, request: httpx.Request) -> httpx.Response:
        method, path = request.method, request.url.path
        self.requests.append(f"{method} {request.url.raw_path.decode()}")
        d = f"/api/v1/datasets/{DATASET_ID}"
        if method == "GET" and path == "/api/v1/me":
            return httpx.Response(200, json=self.user)
        if method == "GET" and path == "/api/v1/me/workspaces":
            return httpx.Response(200, json={"items": [self.workspace]})
        if method == "GET" and path == f"/api/v1/workspaces/{WORKSPACE_ID}":
            return httpx.Response(200, json=self.workspace)
        if method == "GET" and path == "/api/v1/me/datasets":
            return httpx.Response(200, json={"items": [self.dataset]})
        if method == "GET" and path == d:
            return httpx.Response(200, json=self.dataset)
        if method == "GET" and path == f"{d}/fields":
            return httpx.Response(200, json={"items": self.fields})
        if method == "GET" and path == f"{d}/questions":
            return httpx.Response(200, json={"items": self.questions})
        if method == "GET" and path == f"/api/v1/me/datasets/{DATASET_ID}/metadata-properties":
            return httpx.Response(200, json={"items": self.metadata_properties})
        if method == "GET" and path == f"{d}/vectors-settings":
            return httpx.Response(200, json={"items": []})
        if path == f"{d}/records" and method == "GET":
            return httpx.Response(
                200, json={"items": self._page(request), "total": len(self.records)}
            )
        if path == f"{d}/records/search" and method == "POST":
            items = [{"record": r, "query_score": None} for r in self._page(request)]
            return httpx.Response(200, json={"items": items, "total": len(self.records)})
        return httpx.Response(404, json={"detail": f"fake server: no route for {method} {path}"})

    def _page(self, request: httpx.Request) -> list[dict]:
        params = parse_qs(request.url.query.decode())
        offset, limit = int(params.get("offset", ["0"])[0]), int(params.get("limit", ["100"])[0])
        include = params.get("include", [])
        page = [json.loads(json.dumps(r)) for r in self.records[offset : offset + limit]]
        for r in page:
            if "responses" not in include:
                r.pop("responses")
            if "suggestions" not in include:
                r.pop("suggestions")
            r.pop("vectors")
        return page


def main() -> None:
    if os.environ.get("PYTHONHASHSEED") != "0":
        # GenericIO.to_list fills absent columns from a set, so the key order of the flat rows
        # depends on str hashing; pin it so that reruns write byte-identical files.
        os.execve(
            sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"}
        )
    # A client bound to the fake server; rg.Argilla.__init__ itself calls GET /api/v1/me. It must
    # exist before anything else: even rg.TextField(...) asks for the default client.
    fake_holder: dict = {}
    transport = httpx.MockTransport(lambda request: fake_holder["server"](request))
    fake_holder["server"] = lambda request: httpx.Response(
        200,
        json={
            "id": OWNER_ID,
            "first_name": "Export",
            "last_name": "Bot",
            "username": "export-bot",
            "role": "owner",
            "api_key": "argilla.apikey",
            "inserted_at": ts(T0),
            "updated_at": ts(T0),
        },
    )
    client = rg.Argilla(
        api_url=API_URL, api_key="argilla.apikey", retries=0, mounts={"all://": transport}
    )
    settings = build_settings()

    local = rg.Dataset(name=DATASET, workspace=WORKSPACE, settings=settings, client=client)
    server = FakeArgillaServer(settings, build_records(local))
    fake_holder["server"] = server

    # ---- what a user of the SDK runs against a live server ----
    ds = client.datasets(name=DATASET, workspace=WORKSPACE)
    assert ds is not None, server.requests
    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    OUT_DIR.mkdir(parents=True)
    ds.to_disk(str(OUT_DIR))
    flat = ds.records.to_list(flatten=True)
    with FLAT_FILE.open("w", encoding="utf-8") as fh:
        for row in flat:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    print("requests served by the fake server:")
    for line in dict.fromkeys(server.requests):
        print("  ", line)
    nested = json.loads((OUT_DIR / "records.json").read_text())
    print(f"wrote {OUT_DIR}/ ({len(nested)} records) and {FLAT_FILE.name} ({len(flat)} rows)")


if __name__ == "__main__":
    main()
