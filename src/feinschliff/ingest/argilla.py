"""Argilla records (2.x nested and flat forms, 1.x Hub rows) -> canonical feedback records.

Every Argilla layout is first normalised to the nested form of FACTS 10.1.2, with the response
status kept where the export has it::

    {"id": ..., "fields": {...}, "responses": {question: [{"value", "user_id", "status"}]}}

and then mapped to votes by the dataset's settings and the recipe's ``sources[i].mapping``
(``ArgillaLayout``, built in ``argilla_layout``):

- the prompt is ``mapping.prompt``, else a ``chat`` field when there is one, else the field
  named prompt/instruction/question/input, else the first text field; with
  ``mapping.prompt_template`` the user prompt is that template filled with the record's fields
  (``str.format_map``; a record lacking one of them is quarantined);
- the answers are ``mapping.answers``, else every other text field that the template does not
  use (several that do not all look like answers: the manifest notes which one was rated);
- ``rating`` questions rate the first answer field (``rating_<field>`` rates that field);
- ``label_selection`` questions whose options name answer fields are preferences (``tie``: none);
- ``ranking`` questions over answer fields are rankings (first = best);
- ``text`` questions are human corrections of the first answer: those ``mapping.corrections``
  names, else every one (several: the manifest notes it); answers to the others (comments)
  give nothing and are counted (``argilla_text_response_not_correction``);
- other question types (multi-label, span) carry no training signal here and are ignored.

Only submitted responses count. Discarded and draft ones are skipped and counted in the read log.
The nested ``to_disk`` form has no response status (Argilla drops it), so its responses count as
submitted, and the manifest says so. A response that cannot be used (a rating that is no number,
a ranking of other fields than the record's answers, an answer to a question the dataset does
not have) is set aside and quarantined alone; the record's other votes count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from feinschliff.ingest.argilla_layout import (
    ANSWER_PREFIXES,
    PROMPT_NAMES,
    RESERVED,
    ArgillaLayout,
    MappingMismatch,
    infer_layout,
    layout_from_settings,
    template_fields,
)
from feinschliff.ingest.records import (
    FeedbackRecord,
    Message,
    ReadLog,
    Unusable,
    Vote,
    detail_of,
    finite,
)

__all__ = [  # the layout lives in argilla_layout; importers of these names keep working
    "ANSWER_PREFIXES",
    "PROMPT_NAMES",
    "RESERVED",
    "ArgillaLayout",
    "MappingMismatch",
    "infer_layout",
    "layout_from_settings",
    "nested_from_flat",
    "nested_from_v1",
    "to_record",
]

NO_STATUS_NOTE = (
    "Argilla to_disk (nested) export carries no response status: all its responses were "
    "counted as submitted."
)
NOT_CORRECTION = "argilla_text_response_not_correction"  # a comment question's answers

# what cannot be used, set aside (quarantined alone): the question, {"response": one
# annotator's} or {"responses": all, when they cannot be read one by one}, why
SetAside = tuple[str, dict[str, Any], Exception]


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
) -> tuple[FeedbackRecord, list[SetAside]]:
    """One nested-form record -> FeedbackRecord, and the responses set aside (to quarantine
    alone); raises ValueError/TypeError when the record itself is malformed."""
    if not isinstance(raw, Mapping):
        raise TypeError(f"record is a {type(raw).__name__}, not an object")
    fields = raw.get("fields")
    if not isinstance(fields, Mapping):
        raise ValueError("record has no 'fields' object")
    prompt = _prompt_of(fields, layout)
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
    aside: list[SetAside] = []
    for question, entries in responses.items():
        kind = layout.questions.get(question)
        if kind is None:
            exc = Unusable("response to a question the dataset does not have", detail_of(question))
            aside.append((question, {"responses": entries}, exc))
            continue
        if not isinstance(entries, list):
            exc = Unusable("responses to a question are not a list", detail_of(question))
            aside.append((question, {"responses": entries}, exc))
            continue
        for entry in entries:
            try:
                vote = _response_vote(kind, question, entry, layout, log, answers, first)
            except (ValueError, TypeError) as exc:
                aside.append((question, {"response": entry}, exc))
                continue
            if vote is not None:
                votes.append(vote)
    source_id = raw.get("id") if raw.get("id") is not None else raw.get("_server_id")
    if source_id is None:
        raise ValueError("record has neither 'id' nor '_server_id'")
    record = FeedbackRecord(
        source="argilla",
        source_id=str(source_id),
        location=location,
        timestamp=timestamp,
        prompt=prompt,
        answers=answers,
        votes=votes,
    )
    return record, aside


def _response_vote(
    kind: str,
    question: str,
    entry: Any,
    layout: ArgillaLayout,
    log: ReadLog,
    answers: dict[str, str],
    first: str,
) -> Vote | None:
    """One annotator's response -> a vote (None: skipped, counted); raises when unusable."""
    if not isinstance(entry, Mapping) or "value" not in entry:
        raise Unusable("malformed response", detail_of(entry))
    status = entry.get("status")
    if status is None:
        log.note(NO_STATUS_NOTE)
    elif status != "submitted":  # draft, discarded (a key per status Argilla has)
        known = status in ("draft", "discarded", "pending")
        log.stats[f"argilla_response_{status if known else 'other_status'}"] += 1
        return None
    if kind == "text" and not layout.corrects(question):
        log.stats[NOT_CORRECTION] += 1  # a comment, say: no training data
        return None
    return _vote(kind, question, entry, answers, first)


def _prompt_of(fields: Mapping[str, Any], layout: ArgillaLayout) -> list[Message]:
    if layout.template is None:
        return _prompt(fields.get(layout.prompt))
    values = {}
    for name in template_fields(layout.template):
        value = fields.get(name)
        if not isinstance(value, str):  # absent (an optional field), or no text
            raise Unusable("record lacks a field that mapping.prompt_template uses", repr(name))
        values[name] = value
    return _prompt(layout.template.format_map(values))


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
