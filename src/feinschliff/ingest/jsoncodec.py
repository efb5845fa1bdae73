"""JSON text <-> values for the ingest: orjson where it can, the standard library where it
cannot (NaN/Infinity, ints beyond 64 bit, deep nesting, lone surrogates).

``loads`` never returns a string holding a lone surrogate (``"\\ud83d"``: legal JSON, no UTF-8
text): it raises ``LoneSurrogate`` instead. ``dumps`` writes any raw value, however hostile
(quarantined rows keep theirs), as compact UTF-8 JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any

from feinschliff.ingest.records import LoneSurrogate, lone_surrogate_at

try:  # orjson is several times faster than json for whole pages; json is the fallback
    import orjson

    def loads(data: bytes | str) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:  # NaN/Infinity, big ints, nesting > 1024, surrogates
            return _json_loads(data)

    def dumps(value: Any) -> bytes:
        # default=str: raw values of quarantined rows may hold bytes or other non-JSON types
        try:
            return orjson.dumps(value, default=str)
        except TypeError:  # ints beyond 64 bit, nesting deeper than orjson writes
            return _json_dumps(value)
except ImportError:  # pragma: no cover - orjson ships with the lock

    def loads(data: bytes | str) -> Any:
        return _json_loads(data)

    def dumps(value: Any) -> bytes:
        return _json_dumps(value)


def _json_loads(data: bytes | str) -> Any:
    # The slow path only (orjson refused the text): checking here keeps every string that
    # ``loads`` returns encodable, so no writer or tokenizer downstream meets a surrogate.
    try:
        value = json.loads(data)
    except RecursionError:  # hostile nesting must be a parse error, not a crash
        raise ValueError("JSON nested too deeply") from None
    at = lone_surrogate_at(value)
    if at is not None:
        raise LoneSurrogate(value, at)
    return value


def _json_dumps(value: Any) -> bytes:
    text = json.dumps(
        _plain(value, 200), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (only inside strings): as a JSON escape
        return text.encode("utf-8", errors="backslashreplace")


def _plain(value: Any, depth: int) -> Any:
    """A JSON-safe copy of a hostile raw value (like orjson: NaN/inf -> null), with ints
    beyond 64 bit as strings and nesting cut at ``depth`` levels."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else f"<int with {value.bit_length()} bits>"
    if depth <= 0:
        return "<nested too deeply>"
    if isinstance(value, dict):
        return {str(k): _plain(v, depth - 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, depth - 1) for v in value]
    return str(value)
