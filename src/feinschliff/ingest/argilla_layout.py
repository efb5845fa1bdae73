"""Which Argilla fields are prompt and answers, and each question's type (``ArgillaLayout``).

The layout comes from the dataset's settings (``.argilla/settings.json``, 1.x ``argilla.yaml``)
or, for a flat export without them, is inferred from its columns. The recipe's
``sources[i].mapping`` overrides the defaults (see the rules in ``argilla``); a mapping that
names a field or question the dataset does not have raises ``MappingMismatch`` (the stage
fails with that line). Defaults that may not be what the team meant add a manifest note.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from feinschliff.specs.feedback import SourceMapping

PROMPT_NAMES = ("prompt", "instruction", "question", "input")
ANSWER_PREFIXES = ("response", "answer", "output", "completion", "generation", "chosen", "rejected")
RESERVED = {"id", "status", "_server_id", "external_id", "metadata", "vectors"}
MAPPING_KEYS = ("prompt", "answers", "corrections", "prompt_template")


class MappingMismatch(ValueError):
    """``sources[i].mapping`` names a field or question the dataset does not have."""


@dataclass(frozen=True)
class ArgillaLayout:
    """Which field is the prompt, which are answers, and each question's type.

    ``template``: the prompt is built from it (``mapping.prompt_template``); ``corrections``:
    the text questions that correct the answer (None: every one); ``notes``: for the manifest."""

    prompt: str
    answers: tuple[str, ...]
    fields: tuple[str, ...]
    questions: Mapping[str, str]
    inferred: bool = False
    template: str | None = None
    corrections: frozenset[str] | None = None
    notes: tuple[str, ...] = ()

    def corrects(self, question: str) -> bool:
        return self.corrections is None or question in self.corrections


def mapped(mapping: SourceMapping | None) -> bool:
    """Whether the recipe sets any of the mapping's keys (else every default holds)."""
    return mapping is not None and any(getattr(mapping, k) is not None for k in MAPPING_KEYS)


def template_fields(template: str | None) -> list[str]:
    """The field names a ``str.format`` template uses, in order (validated by the recipe)."""
    if template is None:
        return []
    names = [n for _, n, _, _ in string.Formatter().parse(template) if n]
    return list(dict.fromkeys(names))


def layout_from_settings(
    settings: Mapping[str, Any], mapping: SourceMapping | None = None
) -> ArgillaLayout:
    """From Argilla 2.x ``.argilla/settings.json`` or 1.x ``argilla.yaml`` (same shape here)."""
    fields = [(f["name"], _type_of(f)) for f in settings.get("fields") or []]
    questions = {q["name"]: _type_of(q) for q in settings.get("questions") or []}
    names = [n for n, _ in fields]
    check_mapping(mapping, names, questions, typed=True)
    options = _option_values(settings.get("questions") or [])
    return _layout(names, [n for n, k in fields if k == "chat"], questions, mapping, options)


def check_mapping(
    mapping: SourceMapping | None,
    fields: Iterable[str],
    questions: Mapping[str, str],
    *,
    typed: bool,
) -> None:
    """Raise ``MappingMismatch`` for a mapped field or question the dataset does not have
    (``typed``: the question types are known, so a correction must be a text question)."""
    if not mapped(mapping):
        return
    assert mapping is not None
    fields = list(fields)
    named = [
        ("prompt", [mapping.prompt] if mapping.prompt else []),
        ("answers", mapping.answers or []),
        ("prompt_template", template_fields(mapping.prompt_template)),
    ]
    for key, names in named:
        missing = [n for n in names if n not in fields]
        if missing:
            raise MappingMismatch(
                f"mapping.{key} names the field {missing[0]!r}, which the Argilla dataset does "
                f"not have (its fields: {', '.join(fields) or 'none'})"
            )
    for q in mapping.corrections or []:
        if q not in questions:
            raise MappingMismatch(
                f"mapping.corrections names {q!r}, which is no question of the Argilla dataset "
                f"(its questions: {', '.join(questions) or 'none'})"
            )
        if typed and questions[q] != "text":
            raise MappingMismatch(
                f"mapping.corrections names {q!r}, a {questions[q]} question; corrections are "
                f"text questions (the dataset's: {', '.join(_texts(questions)) or 'none'})"
            )


def check_columns(rows: Iterable[Any], mapping: SourceMapping | None) -> None:
    """``check_mapping`` against the columns of a flat export without settings (its first rows:
    every row of ``to_list(flatten=True)`` has every column)."""
    if not mapped(mapping):
        return
    keys: dict[str, None] = {}
    for row in rows:
        if isinstance(row, dict):
            keys.update(dict.fromkeys(k for k in row if isinstance(k, str)))
    questions = {k.removesuffix(".responses"): "" for k in keys if k.endswith(".responses")}
    fields = [k for k in keys if k not in RESERVED and "." not in k]
    check_mapping(mapping, fields, questions, typed=False)


def infer_layout(
    row: Mapping[str, Any],
    known: ArgillaLayout | None = None,
    mapping: SourceMapping | None = None,
) -> ArgillaLayout:
    """Guess the layout of a flat row without settings (fields vs metadata vs questions).

    Question types are guessed from the first non-null responses and kept (``known``), so a
    column that is null in the first rows is typed as soon as a row answers it. The questions
    ``mapping.corrections`` names are text questions, whatever their answers look like.
    """
    m = mapping or SourceMapping()
    forced = set(m.corrections or ())
    questions = dict(known.questions) if known else {q: "text" for q in forced}
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
    used = template_fields(m.prompt_template)
    if m.answers is not None:
        answers = list(m.answers)
    else:
        answers = [c for c in columns if c in named or c.lower().startswith(ANSWER_PREFIXES)]
        answers = [a for a in answers if a not in used]
        if known:
            answers += [a for a in known.answers if a not in answers and a in row]
    prompts = [c for c in columns if c in PROMPT_NAMES or c == "chat"]
    if m.prompt:
        prompts = [m.prompt]
    elif not prompts and used:
        prompts = used[:1]  # the template is the prompt
    if not prompts:
        raise ValueError(
            f"no prompt column ({', '.join(PROMPT_NAMES)} or chat) and no .argilla/settings.json "
            "next to the export to say which field is the prompt"
        )
    fields = list(dict.fromkeys(prompts[:1] + answers + used))
    layout = _layout(fields, [c for c in prompts if c == "chat"], questions, mapping, named)
    guessed = [f"{q}={k}" for q, k in questions.items() if k != "unknown" and q not in forced]
    notes = layout.notes
    if guessed:
        notes += (
            f"question types were guessed from the answers ({', '.join(guessed)}), as no "
            ".argilla/settings.json says them: put the dataset's .argilla/settings.json next to "
            "the export, or name the text questions that correct the answer in "
            "feedback.sources[i].mapping.corrections",
        )
    return ArgillaLayout(
        layout.prompt,
        layout.answers,
        layout.fields,
        questions,
        inferred=True,
        template=layout.template,
        corrections=layout.corrections,
        notes=notes,
    )


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


def _layout(
    fields: list[str],
    chat: list[str],
    questions: dict[str, str],
    mapping: SourceMapping | None = None,
    options: Iterable[str] = (),
) -> ArgillaLayout:
    m = mapping or SourceMapping()
    if not fields:
        raise ValueError("the dataset has no fields")
    texts = [n for n in fields if n not in chat]
    used = template_fields(m.prompt_template)
    prompt = m.prompt or (
        chat[0] if chat else next((n for n in PROMPT_NAMES if n in texts), (texts or used)[0])
    )
    if m.answers is not None:
        if prompt in m.answers:
            raise MappingMismatch(
                f"mapping.answers names the prompt field {prompt!r}; set mapping.prompt to the "
                "field that is the prompt"
            )
        answers = tuple(m.answers)
    else:  # the fields a template puts into the prompt are no answers
        answers = tuple(n for n in texts if n != prompt and n not in PROMPT_NAMES and n not in used)
    corrections = frozenset(m.corrections) if m.corrections is not None else None
    notes = _default_notes(m, prompt, answers, questions, set(options))
    return ArgillaLayout(
        prompt,
        answers,
        tuple(fields),
        questions,
        template=m.prompt_template,
        corrections=corrections,
        notes=notes,
    )


def _default_notes(
    m: SourceMapping,
    prompt: str,
    answers: tuple[str, ...],
    questions: Mapping[str, str],
    options: set[str],
) -> tuple[str, ...]:
    """Notes where a default may not be what the team meant: several fields read as answers
    that do not all look like answers (a RAG passage, say), several text questions read as
    corrections (a comment, say)."""
    notes = []
    odd = [a for a in answers if not (a.lower().startswith(ANSWER_PREFIXES) or a in options)]
    if m.answers is None and len(answers) > 1 and odd:
        notes.append(
            f"Argilla fields {', '.join(answers)} were all read as answers (every text field "
            f"but the prompt {prompt!r}): ratings and corrections were read as about "
            f"{answers[0]!r}; feedback.sources[i].mapping.answers names the answer fields "
            "(and mapping.prompt_template puts context fields into the prompt)"
        )
    texts = _texts(questions)
    if m.corrections is None and len(texts) > 1:
        notes.append(
            f"Argilla text questions {', '.join(texts)} were all read as corrections of the "
            "answer; feedback.sources[i].mapping.corrections names the ones that are (the "
            "others, such as comments, then give no training data)"
        )
    return tuple(notes)


def _texts(questions: Mapping[str, str]) -> list[str]:
    return [q for q, kind in questions.items() if kind == "text"]


def _option_values(questions: Iterable[Mapping[str, Any]]) -> set[str]:
    """The options of label and ranking questions (field names there are answers)."""
    values = set()
    for q in questions:
        settings = q.get("settings") if isinstance(q.get("settings"), Mapping) else q
        if _type_of(q) in ("label_selection", "ranking"):
            for option in settings.get("options") or []:
                if isinstance(option, Mapping) and option.get("value") is not None:
                    values.add(str(option["value"]))
    return values


def _type_of(item: Mapping[str, Any]) -> str:
    settings = item.get("settings")
    if isinstance(settings, Mapping) and settings.get("type"):
        return str(settings["type"])
    return str(item.get("type") or "text")
