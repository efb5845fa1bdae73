"""Langfuse inputs and outputs as chat turns: the prompt of an observation, trace or dataset
item, and the answer it gave.

- A string is one user turn; a list is a conversation (OpenAI ``{role, content}`` turns, or
  LangChain's ``{type: human|ai|system, content}``).
- An object (a LangChain chain's or a RAG app's input): the prompt is the text under ``input``,
  ``prompt``, ``question`` or ``query`` (else the ``messages`` list); a chat-history list under
  ``chat_history``, ``history`` or ``messages`` gives the turns before it. When the object holds
  other texts (a retrieved ``context``, ...), the source's ``mapping.prompt_template`` builds
  the prompt from it (``str.format_map``; a key it names that the object lacks: quarantined);
  without one the input is skipped (``OTHER_TEXTS``) rather than trained on without them (one
  without a prompt key is quarantined). Numbers, booleans and the tool list are settings, not
  texts. A string, a list, or an object holding only its prompt ignores the template.
- Tool use (an assistant turn calling a tool, a tool's result, a tool call as the answer) is
  skipped (``TOOL_CALLS``): this stage does not train tool use, and such an input is valid.
"""

from __future__ import annotations

from typing import Any

from feinschliff.ingest.jsonio import loads
from feinschliff.ingest.records import LONE_SURROGATE, LoneSurrogate, Message, Unusable, message

ROLES = {"developer": "system", "human": "user", "ai": "assistant", "function": "tool"}
PROMPT_KEYS = ("input", "prompt", "question", "query")
HISTORY_KEYS = ("chat_history", "history", "messages")
SETTINGS = frozenset(("tools", "functions", "tool_choice"))  # texts, but no prompt context
# tool results (OpenAI chat and Responses API, LangChain), Anthropic's tool content parts
TOOL_ROLES = frozenset(("tool", "function", "function_call", "function_call_output"))
TOOL_PARTS = frozenset(("tool_use", "tool_result", "function_call", "function_call_output"))

TOOL_CALLS = "langfuse_tool_call_conversation"
OTHER_TEXTS = "langfuse_input_with_other_texts"
MISSING_KEY = "prompt_template names a key the Langfuse input object lacks"


class Skip(ValueError):
    """A valid input this stage does not train on: counted under ``stat``, not quarantined;
    ``names`` (input keys, score names) are listed in the manifest note of ``stat``. A
    ValueError, so that a caller not expecting it quarantines the record rather than losing it."""

    def __init__(self, stat: str, names: tuple[str, ...] = ()):
        super().__init__(stat)
        self.stat, self.names = stat, names


Skips = dict[str, set[str]]  # stat -> the names its note lists


def skipped(exc: Skip, stats: list[str], skips: Skips) -> None:
    stats.append(exc.stat)
    skips.setdefault(exc.stat, set()).update(exc.names)


def decode(value: Any) -> Any:
    """v2 observations and CSV cells hold JSON as strings; plain text stays text."""
    if isinstance(value, str) and value[:1] in ("{", "[", '"'):
        try:
            return loads(value)
        except LoneSurrogate as exc:  # JSON after all, but its text cannot be written
            raise Unusable(LONE_SURROGATE, f"in the JSON of a field, at {exc.at}") from None
        except ValueError:
            return value
    return value


def _content(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts
        if any(isinstance(p, dict) and p.get("type") in TOOL_PARTS for p in value):
            raise Skip(TOOL_CALLS)
        parts = [
            p.get("text", "") for p in value if isinstance(p, dict) and p.get("type") == "text"
        ]
        if parts:
            return "".join(parts)
    raise ValueError(f"message content is a {type(value).__name__}, not text")


def _message(m: Any) -> Message:
    if not isinstance(m, dict):
        raise ValueError(f"message is a {type(m).__name__}, not an object")
    role = str(m.get("role") or m.get("type") or "")  # LangChain: {"type": "human", ...}
    if role in TOOL_ROLES or m.get("tool_calls") or m.get("function_call"):
        raise Skip(TOOL_CALLS)  # ([] or null tool_calls: an ordinary turn)
    return message(ROLES.get(role, role), _content(m.get("content")))


def messages(value: Any, template: str | None = None) -> list[Message]:
    """The prompt's turns; ``template``: the source's ``mapping.prompt_template``."""
    value = decode(value)
    if isinstance(value, dict):
        return _object_turns(value, template)
    return _turns(value)


def _turns(value: Any) -> list[Message]:
    if isinstance(value, str) and value.strip():
        return [message("user", value)]
    if isinstance(value, list) and value:
        return [_message(m) for m in value]
    raise ValueError("observation input holds no prompt")


def _object_turns(obj: dict[str, Any], template: str | None) -> list[Message]:
    key = next((k for k in PROMPT_KEYS if k in obj), "messages" if "messages" in obj else None)
    history = next((k for k in HISTORY_KEYS if k != key and isinstance(obj.get(k), list)), None)
    others = [
        str(k)
        for k, v in obj.items()
        if k != key and k != history and k not in SETTINGS and _holds_text(v)
    ]
    earlier = [_message(m) for m in obj[history]] if history else []
    if others and template is not None:
        return earlier + [message("user", _format(template, obj))]
    if others and key is not None:  # a retrieved context, say: never trained on without it
        raise Skip(OTHER_TEXTS, tuple(others))
    return earlier + _turns(decode(obj[key]) if key else None)  # no prompt key: quarantined


def _holds_text(value: Any, depth: int = 4) -> bool:
    """Non-empty text, also inside lists and objects (retrieved documents)."""
    if isinstance(value, str):
        return bool(value.strip())
    if depth and isinstance(value, list | dict):
        items = value.values() if isinstance(value, dict) else value
        return any(_holds_text(v, depth - 1) for v in items)
    return False


def _format(template: str, obj: dict[str, Any]) -> str:
    try:
        return template.format_map(obj)
    except KeyError as exc:
        keys = sorted(map(str, obj))
        raise Unusable(MISSING_KEY, f"key {exc.args[0]!r}; the object has {keys}") from None


def answer_text(value: Any) -> str:
    value = decode(value)
    if isinstance(value, dict):
        if _calls_tool(value):
            raise Skip(TOOL_CALLS)  # the answer calls a tool
        if "content" in value:
            return _content(value["content"])
        choices = value.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            chosen = choices[0].get("message") or {}
            if isinstance(chosen, dict) and _calls_tool(chosen):
                raise Skip(TOOL_CALLS)
            return _content(chosen.get("content", ""))
        for key in ("completion", "output", "text", "answer"):
            if isinstance(value.get(key), str):
                return value[key]
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        if _calls_tool(value[-1]):
            raise Skip(TOOL_CALLS)
        return _content(value[-1].get("content"))  # a message list: its last turn
    if isinstance(value, str):
        return value
    raise ValueError("observation output holds no assistant text")


def _calls_tool(m: dict[str, Any]) -> bool:
    return bool(m.get("tool_calls") or m.get("function_call"))  # [] or null: no call
