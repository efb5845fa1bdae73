"""German prompt templates and output schemas for the generation pipeline.

distilabel's stock SelfInstruct and UltraFeedback templates are English-only; these are the
German versions used by the task subclasses in ``tasks``. ``TEMPLATE_VERSION`` is part of the
cache key and of the manifest: bump it whenever a template or schema changes, so outputs made
with older prompts are not reused.

Each step has a JSON schema that the teacher is asked to follow (OpenAI ``response_format``
json_schema or vLLM ``structured_outputs``); string lengths and list sizes are bounded so that a
constrained reply fits its token limit. Strict ``response_format`` refuses string lengths, so
there only the list sizes are sent (``strict_schema``); the length filters run on the
replies either way. Without constraints the replies are parsed from text.
"""

from __future__ import annotations

import json
import re
from typing import Any

TEMPLATE_VERSION = "de-v1"

SELF_INSTRUCT = """\
# Aufgabe
Schreibe {{ num_instructions }} verschiedene Anfragen, die Nutzerinnen und Nutzer an die unten \
beschriebene KI-Anwendung stellen könnten und die zum Kontext passen.

# Kriterien
{{ criteria_for_query_generation }}

# KI-Anwendung
{{ application_description }}

# Kontext
{{ input }}

# Ausgabe
{% if structured %}Antworte als JSON-Objekt {"anfragen": [...]} mit genau \
{{ num_instructions }} Anfragen.{% else %}Schreibe jede Anfrage in eine eigene Zeile, ohne \
Nummerierung und ohne Aufzählungszeichen.{% endif %}
"""

CRITERIA = (
    "Jede Anfrage ist auf Deutsch, in sich verständlich und höchstens zwei Sätze lang.\n"
    "Verwende unterschiedliche Verben und mische Fragen (z. B. „Wie kann ich …?“) mit "
    "Aufforderungen (z. B. „Erkläre mir …“).\n"
    "Die Anfragen enthalten keine personenbezogenen Daten."
)

JUDGE_SYSTEM = (
    "Du bewertest die Qualität von Antworten nach vorgegebenen Kriterien.\n"
    "Du erhältst eine Anfrage und {no_texts} Antworten. Bewerte jede Antwort unabhängig "
    "von den anderen mit einer Note und einer kurzen Begründung."
)

JUDGE = """\
# Gesamtbewertung der Antwortqualität

Bewerte jede Antwort nach diesen Kriterien:
1. **Korrektheit und Nutzen**: Ist die Antwort richtig und hilfreich?
2. **Ehrlichkeit**: Drückt die Antwort Unsicherheit angemessen aus?
3. **Keine Erfindungen**: Enthält sie irreführende oder erfundene Details?
4. **Anweisung befolgt**: Beantwortet sie die Anfrage auf Deutsch und im Sinne der Nutzerin?

**Noten** von 1 bis 5: 1 = schlecht oder falsch, 2 = teilweise brauchbar, 3 = gut, \
4 = sehr gut, 5 = hervorragend.

## Anfrage
{{ instruction }}

## Antworten
{%- for generation in generations %}
<antwort {{ loop.index }}> {{ generation }}
{%- endfor %}

## Ausgabe
{% if structured %}Antworte als JSON-Objekt {"bewertungen": [{"note": ..., "begruendung": ...}, \
...]} mit genau einer Bewertung pro Antwort, in der Reihenfolge der Antworten.\
{% else %}Für jede Antwort ein Absatz:
Note: [1-5]
Begründung: [ein Satz]{% endif %}
"""


def instructions_schema(n: int, max_chars: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "anfragen": {
                "type": "array",
                "minItems": n,
                "maxItems": n,
                "items": {"type": "string", "minLength": 1, "maxLength": max_chars},
            }
        },
        "required": ["anfragen"],
        "additionalProperties": False,
    }


def ratings_schema(n: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "bewertungen": {
                "type": "array",
                "minItems": n,
                "maxItems": n,
                "items": {
                    "type": "object",
                    "properties": {
                        "note": {"type": "integer", "enum": [1, 2, 3, 4, 5]},
                        "begruendung": {"type": "string", "maxLength": 100},
                    },
                    "required": ["note", "begruendung"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["bewertungen"],
        "additionalProperties": False,
    }


# JSON-schema keywords OpenAI's strict structured outputs refuse with HTTP 400 (the string
# lengths; pydantic-ai's OpenAIJsonSchemaTransformer strips the same ones). minItems, maxItems
# and enum are accepted.
STRICT_INCOMPATIBLE = frozenset({"minLength", "maxLength"})


def strict_schema(schema: Any) -> Any:
    """``schema`` without the keywords strict ``response_format`` refuses, at every depth.

    The lengths are not enforced then; the length filters still drop what is too long. vLLM's
    own ``structured_outputs`` (``structured_output: vllm``) keeps them."""
    if isinstance(schema, dict):
        return {
            k: {name: strict_schema(sub) for name, sub in v.items()}
            if k == "properties" and isinstance(v, dict)  # names, not keywords
            else strict_schema(v)
            for k, v in schema.items()
            if k not in STRICT_INCOMPATIBLE
        }
    if isinstance(schema, list):
        return [strict_schema(v) for v in schema]
    return schema


# --------------------------------------------------------------------------- parsing

_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")
_FENCE = re.compile(r"^\s*```")  # a Markdown code fence line, ```json included
# "Note: 4", "**Note:** 4", "Note: **4**", "Note: 4/5", "Note: 4 von 5", then the rationale on the
# next line ("Begründung:", bold or not). One digit only: "4/10", "3 oder 4" or "45" are refused.
_EM = r"[*_]{0,2}"
_RATING_BLOCK = re.compile(
    rf"{_EM}Note{_EM}\s*:{_EM}\s*{_EM}(\d){_EM}(?:\s*(?:/|von)\s*5)?\D*?(?:\n|$)"
    rf"\s*{_EM}Begr(?:ü|ue)ndung{_EM}\s*:{_EM}\s*(.+)",
    re.IGNORECASE,
)
# A UTF-16 surrogate code point in a str: JSON may write one alone ("\ud83d", half an emoji),
# json.loads keeps it, and it cannot be encoded as UTF-8, so distilabel's writer (orjson)
# crashes on it and loses the whole batch.
_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"
# Where a teacher reply held a lone surrogate: U+FFFF, a Unicode noncharacter (valid UTF-8,
# never in real text), so a U+FFFD of the text's own (a PDF's lost umlaut) is no broken text.
BROKEN = "\uffff"
_MAX_OBJECT_TRIES = 50  # "{" / "[" positions tried in a reply that is not JSON as a whole
# a line opening a JSON array or object: "[", "{", '["Wie', '{"anfragen"' (not "[1] Wie ...")
_JSON_LINE = re.compile(r'^\s*[\[{]\s*(?:$|["\[{])', re.MULTILINE)


def replace_surrogates(text: str) -> str:
    """``text`` with every unpaired surrogate replaced by U+FFFD (valid UTF-8 again)."""
    return _SURROGATE.sub(REPLACEMENT, text)


def mark_surrogates(text: str) -> str:
    """A teacher reply with every unpaired surrogate replaced by ``BROKEN`` (valid UTF-8 for
    the cache and distilabel's writer; ``invalid_text`` drops what holds it)."""
    return _SURROGATE.sub(BROKEN, text)


def invalid_text(text: str) -> bool:
    """Text that held an unpaired surrogate (now ``BROKEN``): broken text, never a training
    row. A U+FFFD of its own is kept (seed text extracted from a PDF, quoted)."""
    return BROKEN in text or _SURROGATE.search(text) is not None


def json_object(text: str, key: str) -> Any:
    """The reply's JSON object holding a list under ``key``: the whole text, else the first
    ``{...}`` that decodes to such an object (a reply wrapped in a Markdown code fence or in
    prose, from an endpoint that ignored ``response_format``; an example object or schema
    before it is skipped); None when there is none."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    for value in [data, *(v for _, v in _json_values(text, "{"))]:
        if isinstance(value, dict) and isinstance(value.get(key), list):
            return value
    return None


def _json_values(text: str, openers: str):
    """Values that decode at ``openers`` positions, left to right, past each decoded one."""
    decoder = json.JSONDecoder()
    pattern = re.compile("[" + re.escape(openers) + "]")
    match = pattern.search(text)
    for _ in range(_MAX_OBJECT_TRIES):
        if match is None:
            return
        try:
            value, end = decoder.raw_decode(text, match.start())
        except ValueError:
            match = pattern.search(text, match.start() + 1)
            continue
        yield match.start(), value
        match = pattern.search(text, end)


def _string_list(text: str) -> list[str] | None:
    """The strings of the reply's JSON array of strings that opens a line (fenced or whole;
    never one inside an object: an object's list counts under its key only)."""
    for start, value in _json_values(text, "[{"):
        at_line_start = not text[text.rfind("\n", 0, start) + 1 : start].strip()
        strings = isinstance(value, list) and all(isinstance(v, str) for v in value)
        if strings and value and at_line_start:
            return value
    return None


def _looks_like_json(text: str) -> bool:
    if _JSON_LINE.search(text):  # truncated JSON too
        return True
    return any(isinstance(v, dict) and v for _, v in _json_values(text, "{"))


def parse_instructions(text: str | None, structured: bool = False) -> list[str]:
    """Questions from a reply: its JSON object's ``anfragen``, else the strings of a JSON
    array of strings; a reply holding other JSON (another object, truncated JSON) is
    unparseable (no question: split into lines, its JSON syntax would become questions). A
    reply without JSON is split into one question per non-empty line (code fence lines
    skipped), for a free-text request and for an endpoint that ignored ``response_format``.
    Unpaired surrogates become ``BROKEN``; ``select`` drops such a question
    (``instruction_invalid_text``)."""
    if not text:
        return []
    data = json_object(text, "anfragen")
    strings = _string_list(text) if data is None else None
    if data is not None:
        items = [s for s in data["anfragen"] if isinstance(s, str)]
    elif strings is not None:
        items = strings
    elif _looks_like_json(text):
        return []
    else:
        lines = [line for line in text.splitlines() if not _FENCE.match(line)]
        items = [_BULLET.sub("", line) for line in lines]
    return [mark_surrogates(s.strip()) for s in items if s.strip()]


def parse_ratings(text: str | None, n: int) -> tuple[list[int | None], list[str | None]]:
    """Ratings and rationales for ``n`` answers; ``None`` where a rating cannot be read.

    A reply with a different number of ratings than answers is unusable as a whole (the order
    would be ambiguous), so every rating becomes ``None``. The JSON object may be wrapped in a
    code fence; rationales have unpaired surrogates replaced (see ``parse_instructions``).
    """
    empty: tuple[list[int | None], list[str | None]] = ([None] * n, [None] * n)
    if not text:
        return empty
    data = json_object(text, "bewertungen")
    if data is not None:
        items = data["bewertungen"]
        if len(items) != n:
            return empty
        ratings: list[int | None] = []
        reasons: list[str | None] = []
        for item in items:
            note = item.get("note") if isinstance(item, dict) else None
            ok = isinstance(note, int) and not isinstance(note, bool) and 1 <= note <= 5
            ratings.append(note if ok else None)
            reason = item.get("begruendung") if isinstance(item, dict) else None
            reasons.append(_clean(reason) if isinstance(reason, str) else None)
        return ratings, reasons
    blocks = [m for m in _RATING_BLOCK.finditer(text)]
    if len(blocks) != n:
        return empty
    ratings = [int(m.group(1)) if 1 <= int(m.group(1)) <= 5 else None for m in blocks]
    return ratings, [_clean(m.group(2).strip()) for m in blocks]


def _clean(reason: str) -> str:
    """A rationale (kept in preference rows): a lone surrogate as U+FFFD, no ``BROKEN``."""
    return replace_surrogates(reason).replace(BROKEN, REPLACEMENT)
