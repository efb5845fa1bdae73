"""Read an Argilla 2.x ``Dataset.to_disk`` export into canonical feedback records.

Layout (FACTS 10.1.1): ``.argilla/settings.json`` (fields, questions), ``records.json`` (one
JSON array in the nested ``to_list(flatten=False)`` form). How questions map to votes:

- the prompt is a ``chat`` field when there is one, else the field named prompt/instruction/
  question, else the first text field; every other text field is an answer;
- ``rating`` questions rate the first answer field (``rating_<field>`` rates that field);
- ``label_selection`` questions whose options name answer fields are preferences (``tie`` none);
- ``ranking`` questions over answer fields are rankings (first = best);
- ``text`` questions are human corrections of the first answer.

The nested form carries no response status (Argilla drops it in ``to_disk``), so every response
in such an export is treated as submitted; the manifest says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from feinschliff.artifacts import sha256_file
from feinschliff.ingest.records import FeedbackRecord, Message, Quarantined, ReadResult, Vote

PROMPT_NAMES = ("prompt", "instruction", "question", "input")


def is_argilla_disk_export(path: Path) -> bool:
    return (path / ".argilla" / "settings.json").is_file() and (path / "records.json").is_file()


def read_argilla_disk(path: Path) -> ReadResult:
    settings_file = path / ".argilla" / "settings.json"
    records_file = path / "records.json"
    settings = json.loads(settings_file.read_text(encoding="utf-8"))
    result = ReadResult(inputs={str(f): sha256_file(f) for f in (settings_file, records_file)})
    layout = _layout(settings)
    try:
        raw_records = json.loads(records_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        result.quarantined.append(
            Quarantined(
                source="argilla", location=str(records_file), reason=f"not JSON: {exc}", raw=None
            )
        )
        return result
    if not isinstance(raw_records, list):
        raise ValueError(f"{records_file}: expected a JSON array of records")
    for i, raw in enumerate(raw_records):
        where = f"{records_file}#{i}"
        try:
            result.records.append(_to_record(raw, layout))
        except (ValueError, TypeError, KeyError, ValidationError) as exc:
            reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            result.quarantined.append(
                Quarantined(source="argilla", location=where, reason=reason, raw=raw)
            )
    return result


def _layout(settings: dict[str, Any]) -> dict[str, Any]:
    fields = [
        (f["name"], f.get("settings", {}).get("type", f.get("type"))) for f in settings["fields"]
    ]
    chat = [name for name, kind in fields if kind == "chat"]
    texts = [name for name, kind in fields if kind == "text"]
    prompt = chat[0] if chat else next((n for n in PROMPT_NAMES if n in texts), texts[0])
    answers = [n for n in texts if n != prompt and n not in PROMPT_NAMES]
    questions = {
        q["name"]: q.get("settings", {}).get("type", q.get("type")) for q in settings["questions"]
    }
    return {"prompt": prompt, "answers": answers, "questions": questions}


def _to_record(raw: Any, layout: dict[str, Any]) -> FeedbackRecord:
    if not isinstance(raw, dict):
        raise TypeError(f"record is a {type(raw).__name__}, not an object")
    fields = raw.get("fields")
    if not isinstance(fields, dict):
        raise ValueError("record has no 'fields' object")
    prompt = _prompt(fields.get(layout["prompt"]))
    answers = {
        k: fields[k]
        for k in layout["answers"]
        if isinstance(fields.get(k), str) and fields[k].strip()
    }
    if not answers:
        raise ValueError(f"record has no answer text in fields {layout['answers']}")
    first = next(iter(answers))
    votes: list[Vote] = []
    responses = raw.get("responses") or {}
    if not isinstance(responses, dict):
        raise ValueError("'responses' is not an object")
    for question, entries in responses.items():
        kind = layout["questions"].get(question)
        if kind is None:
            raise ValueError(f"response to unknown question {question!r}")
        for entry in entries or []:
            vote = _vote(kind, question, entry, answers, first)
            if vote is not None:
                votes.append(vote)
    return FeedbackRecord(
        source="argilla",
        source_id=str(raw.get("id") or raw.get("_server_id")),
        prompt=prompt,
        answers=answers,
        votes=votes,
    )


def _prompt(value: Any) -> list[Message]:
    if isinstance(value, str) and value.strip():
        return [Message(role="user", content=value)]
    if isinstance(value, list) and value:
        return [Message.model_validate(m) for m in value]
    raise ValueError("record has no prompt")


def _vote(kind: str, question: str, entry: Any, answers: dict[str, str], first: str) -> Vote | None:
    if not isinstance(entry, dict) or "value" not in entry:
        raise ValueError(f"malformed response to {question!r}: {entry!r}")
    user, value = entry.get("user_id"), entry["value"]
    if kind == "rating":
        target = question.removeprefix("rating_") if question.startswith("rating_") else first
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"rating {value!r} is not a number")
        return Vote(kind="rating", annotator=user, answer=target, value=float(value))
    if kind == "label_selection":
        if value in answers or value == "tie":
            return Vote(kind="preference", annotator=user, value=None if value == "tie" else value)
        return None  # a label question that is not about the answers
    if kind == "ranking":
        order = [v["value"] if isinstance(v, dict) else v for v in value]
        if all(v in answers for v in order) and len(order) >= 2:
            return Vote(kind="ranking", annotator=user, value=order)
        raise ValueError(f"ranking {value!r} does not rank the answer fields")
    if kind == "text":
        if isinstance(value, str) and value.strip():
            return Vote(kind="correction", annotator=user, answer=first, value=value)
        return None
    return None  # multi_label_selection, span: not training signal here
