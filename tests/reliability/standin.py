"""A local OpenAI-compatible ``/chat/completions`` stand-in for a remote teacher or judge API.

The real teacher/judge would be a third-party API that cannot be reached from here; this server
sits where it would, records every request exactly as it left the process (body and headers) and
answers in the shape the caller asked for: the JSON schema in ``response_format`` (generate's
questions ``anfragen``, answers ``antwort``, ratings ``bewertungen``), a judge's verdict format
(``[[A]]``/``[[B]]``/``[[C]]`` for pairs, ``Bewertung: [[n]]`` for single grades), else text.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from tests.http_stub import StubHandler, base_url, serve

QUESTIONS = [
    "Wie melde ich meinen Zählerstand online?",
    "Wie kann ich meinen monatlichen Abschlag ändern?",
    "Erkläre mir, wie ich meinen Stromvertrag kündigen kann.",
    "Wo finde ich meine letzte Jahresabrechnung im Kundenportal?",
    "Wie ändere ich meine Bankverbindung für das Lastschriftmandat?",
    "Was passiert bei einem Umzug mit meinem Gasvertrag?",
]
ANSWER = (
    "Gerne helfe ich Ihnen: Das geht am einfachsten im Kundenportal unter „Mein Vertrag“. "
    "Dort finden Sie alle Schritte und können die Änderung direkt speichern."
)


class OpenAIStandIn:
    """Start with ``OpenAIStandIn()``; ``url`` is the base URL (``.../v1``); ``stop()`` ends it.
    ``questions``: what it answers to generate's question requests, in turn."""

    def __init__(self, questions: list[str] | None = None) -> None:
        self.questions = questions or QUESTIONS
        self.lock = threading.Lock()
        self.bodies: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        stand_in = self

        class Handler(StubHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                raw = self.read_body()
                body = json.loads(raw)
                with stand_in.lock:
                    stand_in.raw.append(raw)
                    stand_in.bodies.append(body)
                    stand_in.headers.append(dict(self.headers.items()))
                with stand_in.lock:
                    asked = sum("anfragen" in _schema(b) for b in stand_in.bodies) - 1
                content = _answer(body, stand_in.questions, asked)
                reply = {
                    "id": f"standin-{len(stand_in.bodies)}",
                    "object": "chat.completion",
                    "model": body.get("model", "standin"),
                    "choices": [
                        {
                            "index": i,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                        for i in range(int(body.get("n") or 1))
                    ],
                    "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70},
                }
                self.respond(200, json.dumps(reply, ensure_ascii=False).encode())

        self.server = serve(Handler)
        self.url = base_url(self.server) + "/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def sent_text(self) -> str:
        """Everything that reached the endpoint: raw bodies and headers, as one string."""
        with self.lock:
            parts = [r.decode("utf-8", "replace") for r in self.raw]
            parts += [json.dumps(h) for h in self.headers]
        return "\n".join(parts)


def _schema(body: dict[str, Any]) -> dict[str, Any]:
    """The properties of the JSON schema a request asks for (empty without one)."""
    schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema", {})
    return schema.get("properties", {})


def _answer(body: dict[str, Any], questions: list[str], asked: int) -> str:
    props = _schema(body)
    if "anfragen" in props:
        n = props["anfragen"].get("minItems", 2)
        start = (asked * n) % len(questions)  # each request gets the next questions
        return json.dumps(
            {"anfragen": (questions * (n + 1))[start : start + n]}, ensure_ascii=False
        )
    if "antwort" in props:
        return json.dumps({"antwort": ANSWER}, ensure_ascii=False)
    if "bewertungen" in props:
        n = props["bewertungen"].get("minItems", 2)
        notes = [5, 2, 4, 1, 3][:n]
        return json.dumps(
            {"bewertungen": [{"note": x, "begruendung": "passt"} for x in notes]},
            ensure_ascii=False,
        )
    text = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
    if "[[A]]" in text:
        return "Antwort A ist hilfreicher. [[A]]"
    if "[[" in text or "Bewertung" in text:
        return "Solide Antwort. Bewertung: [[7]]"
    return ANSWER
