"""Argilla records (2.x nested and flat forms, 1.x Hub rows) -> canonical feedback records.

Every Argilla layout is first normalised to the nested form of FACTS 10.1.2, with the response
status kept where the export has it::

    {"id": ..., "fields": {...}, "responses": {question: [{"value", "user_id", "status"}]}}

and then mapped to votes by the dataset's settings (``ArgillaLayout``):

- the prompt is a ``chat`` field when there is one, else the field named prompt/instruction/
  question/input, else the first text field; every other text field is an answer;
- ``rating`` questions rate the first answer field (``rating_<field>`` rates that field);
- ``label_selection`` questions whose options name answer fields are preferences (``tie``: none);
- ``ranking`` questions over answer fields are rankings (first = best);
- ``text`` questions are human corrections of the first answer;
- other question types (multi-label, span) carry no training signal here and are ignored.

Only submitted responses count. Discarded and draft ones are skipped and counted in the read log.
The nested ``to_disk`` form has no response status (Argilla drops it), so its responses count as
submitted, and the manifest says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from feinschliff.ingest.records import (
    FeedbackRecord,
    Message,
    ReadLog,
    Unusable,
    Vote,
    detail_of,
    finite,
)

PROMPT_NAMES = ("prompt", "instruction", "question", "input")
ANSWER_PREFIXES = ("response", "answer", "output", "completion", "generation", "chosen", "rejected")
RESERVED = {"id", "status", "_server_id", "external_id", "metadata", "vectors"}
NO_STATUS_NOTE = (
    "Argilla to_disk (nested) export carries no response status: all its responses were "
    "counted as submitted."
)


@dataclass(frozen=True)
class ArgillaLayout:
    """Which field is the prompt, which are answers, and each question's type."""

    prompt: str
    answers: tuple[str, ...]
    fields: tuple[str, ...]
    questions: Mapping[str, str]
    inferred: bool = False


def layout_from_settings(settings: Mapping[str, Any]) -> ArgillaLayout:
    """From Argilla 2.x ``.argilla/settings.json`` or 1.x ``argilla.yaml`` (same shape here)."""
    fields = [(f["name"], _type_of(f)) for f in settings.get("fields") or []]
    questions = {q["name"]: _type_of(q) for q in settings.get("questions") or []}
    return _layout([n for n, _ in fields], [n for n, k in fields if k == "chat"], questions)


def infer_layout(row: Mapping[str, Any], known: ArgillaLayout | None = None) -> ArgillaLayout:
    """Guess the layout of a flat row without settings (fields vs metadata vs questions).

    Question types are guessed from the first non-null responses and kept (``known``), so a
    column that is null in the first rows is typed as soon as a row answers it.
    """
    questions = dict(known.questions) if known else {}
    for key, value in row.items():
        name = key.removesuffix(".responses")
        if key.endswith(".responses") and questions.get(name, "unknown") == "unknown":
            questions[name] = _guess_question(value) if value else "unknown"
    columns = [
        k
        for k in row
        if k not in RESERVED and "." not in k and isinstance(row[k], str | list | type(None))
    ]
    named = {v for kind, v in _label_values(row, questions) if kind}
    answers = [c for c in columns if c in named or c.lower().startswith(ANSWER_PREFIXES)]
    if known:
        answers += [a for a in known.answers if a not in answers and a in row]
    prompts = [c for c in columns if c in PROMPT_NAMES or c == "chat"]
    if not prompts:
        raise ValueError(
            f"no prompt column ({', '.join(PROMPT_NAMES)} or chat) and no .argilla/settings.json "
            "next to the export to say which field is the prompt"
        )
    fields = prompts[:1] + answers
    layout = _layout(fields, [c for c in prompts if c == "chat"], questions)
    return ArgillaLayout(layout.prompt, layout.answers, layout.fields, questions, inferred=True)


def _label_values(row: Mapping[str, Any], questions: Mapping[str, str]) -> list[tuple[bool, str]]:
    found = []
    for q, kind in questions.items():
        for v in row.get(f"{q}.responses") or []:
            if kind == "label_selection" and isinstance(v, str):
                found.append((True, v))
            elif kind == "ranking" and isinstance(v, list):
                found.extend((True, str(x)) for x in v)
    return found


def _guess_question(values: list[Any]) -> str:
    sample = next((v for v in values if v is not None), None)
    if isinstance(sample, bool):
        return "other"
    if isinstance(sample, int | float):
        return "rating"
    if isinstance(sample, list):
        return "ranking" if all(isinstance(x, str) for x in sample) else "other"
    if isinstance(sample, str):
        texts = [v for v in values if isinstance(v, str)]
        short = all(len(v) < 40 and " " not in v.strip() for v in texts)
        return "label_selection" if short else "text"
    return "other"


def _layout(fields: list[str], chat: list[str], questions: dict[str, str]) -> ArgillaLayout:
    if not fields:
        raise ValueError("the dataset has no fields")
    texts = [n for n in fields if n not in chat]
    prompt = chat[0] if chat else next((n for n in PROMPT_NAMES if n in texts), texts[0])
    answers = tuple(n for n in texts if n != prompt and n not in PROMPT_NAMES)
    return ArgillaLayout(prompt, answers, tuple(fields), questions)


def _type_of(item: Mapping[str, Any]) -> str:
    settings = item.get("settings")
    if isinstance(settings, Mapping) and settings.get("type"):
        return str(settings["type"])
    return str(item.get("type") or "text")


# --------------------------------------------------------------------------- normalising


def nested_from_flat(row: Mapping[str, Any], layout: ArgillaLayout) -> dict[str, Any]:
    """A ``to_list(flatten=True)`` / ``to_datasets()`` row in nested form, statuses kept."""
    responses: dict[str, list[dict[str, Any]]] = {}
    for q in layout.questions:
        values = row.get(f"{q}.responses")
        if values is None:
            continue
        users = row.get(f"{q}.responses.users") or [None] * len(values)
        status = row.get(f"{q}.responses.status") or [None] * len(values)
        if not (len(values) == len(users) == len(status)):
            raise ValueError(f"{q}.responses, .users and .status have different lengths")
        responses[q] = [
            {"value": v, "user_id": u, "status": s}
            for v, u, s in zip(values, users, status, strict=True)
        ]
    return {
        "id": row.get("id") if row.get("id") is not None else row.get("_server_id"),
        "fields": {f: row.get(f) for f in layout.fields},
        "responses": responses,
    }


def nested_from_v1(row: Mapping[str, Any], layout: ArgillaLayout) -> dict[str, Any]:
    """An Argilla 1.x Hub row (``<q>`` = list of {user_id, value, status}) in nested form."""
    responses = {}
    for q in layout.questions:
        entries = row.get(q)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise ValueError(f"column {q!r} is not a list of responses")
        responses[q] = entries
    return {
        "id": row.get("external_id"),
        "fields": {f: row.get(f) for f in layout.fields},
        "responses": responses,
    }


# --------------------------------------------------------------------------- to canonical


def to_record(
    raw: Any, layout: ArgillaLayout, log: ReadLog, location: str, *, timestamp: str | None = None
) -> FeedbackRecord:
    """One nested-form record -> FeedbackRecord; raises ValueError/TypeError when malformed."""
    if not isinstance(raw, Mapping):
        raise TypeError(f"record is a {type(raw).__name__}, not an object")
    fields = raw.get("fields")
    if not isinstance(fields, Mapping):
        raise ValueError("record has no 'fields' object")
    prompt = _prompt(fields.get(layout.prompt))
    answers = {
        k: fields[k] for k in layout.answers if isinstance(fields.get(k), str) and fields[k].strip()
    }
    if not answers:
        raise ValueError(f"record has no answer text in fields {list(layout.answers)}")
    first = next(iter(answers))
    responses = raw.get("responses") or {}
    if not isinstance(responses, Mapping):
        raise ValueError("'responses' is not an object")
    votes: list[Vote] = []
    for question, entries in responses.items():
        kind = layout.questions.get(question)
        if kind is None:
            raise Unusable("response to a question the dataset does not have", detail_of(question))
        if not isinstance(entries, list):
            raise ValueError(f"responses to {question!r} are not a list")
        for entry in entries:
            if not isinstance(entry, Mapping) or "value" not in entry:
                raise Unusable(f"malformed response to {question!r}", detail_of(entry))
            status = entry.get("status")
            if status is None:
                log.note(NO_STATUS_NOTE)
            elif status != "submitted":  # draft, discarded (a key per status Argilla has)
                known = status in ("draft", "discarded", "pending")
                log.stats[f"argilla_response_{status if known else 'other_status'}"] += 1
                continue
            vote = _vote(kind, question, entry, answers, first)
            if vote is not None:
                votes.append(vote)
    source_id = raw.get("id") if raw.get("id") is not None else raw.get("_server_id")
    if source_id is None:
        raise ValueError("record has neither 'id' nor '_server_id'")
    return FeedbackRecord(
        source="argilla",
        source_id=str(source_id),
        location=location,
        timestamp=timestamp,
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


def _vote(
    kind: str, question: str, entry: Mapping[str, Any], answers: dict[str, str], first: str
) -> Vote | None:
    user, value = entry.get("user_id"), entry["value"]
    user = str(user) if user is not None else None
    stamp = entry.get("updated_at") or entry.get("inserted_at")
    if kind == "rating":
        target = question.removeprefix("rating_") if question.startswith("rating_") else first
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise Unusable("rating is not a number", detail_of(value))
        return Vote(
            kind="rating", annotator=user, answer=target, value=finite(value), timestamp=stamp
        )
    if kind == "label_selection":
        if value in answers or value == "tie":
            label = None if value == "tie" else value
            return Vote(kind="preference", annotator=user, value=label, timestamp=stamp)
        return None  # a label question that is not about the answers
    if kind == "ranking":
        order = _ranking(value)
        if all(v in answers for v in order) and len(order) >= 2:
            return Vote(kind="ranking", annotator=user, value=order, timestamp=stamp)
        raise Unusable("ranking does not rank the answer fields", detail_of(value))
    if kind == "text":
        if isinstance(value, str) and value.strip():
            return Vote(
                kind="correction", annotator=user, answer=first, value=value, timestamp=stamp
            )
        return None
    return None  # multi_label_selection, span: not training signal here


def _ranking(value: Any) -> list[str]:
    """Ranking values: ``[str]`` (2.x), ``[{"value", "rank"}]`` (wire), ``{"rank", "value"}`` (1.x)."""
    if isinstance(value, Mapping) and isinstance(value.get("value"), list):
        ranks = value.get("rank") or list(range(1, len(value["value"]) + 1))
        return [str(v) for _, v in sorted(zip(ranks, value["value"], strict=True))]
    if isinstance(value, list):
        if all(isinstance(v, Mapping) for v in value):
            items = sorted(value, key=lambda v: v.get("rank") or 0)
            return [str(v["value"]) for v in items]
        return [str(v) for v in value]
    raise Unusable("ranking is not a list", detail_of(value))
