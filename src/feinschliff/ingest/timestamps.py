"""Order Langfuse and Argilla timestamps by the moment they name, not by their text.

ISO-8601 strings of one shape sort as text, but exports mix shapes: the API writes
``2024-01-01T00:00:00.000Z``, the SDK models ``...:02Z`` next to ``...:02.300000Z`` (a zero
fraction is left out, FACTS 10.2.2), UI exports and hand-made JSONL other offsets. As text
``...:02Z`` sorts after ``...:02.3Z`` ('Z' > '.') and ``11:00+01:00`` after ``10:30Z``.

``time_key`` maps a stamp to a fixed-shape UTC text that sorts by time; a stamp that names no
time (missing, garbage) gets ``UNKNOWN``, which sorts first: it never crashes a read. The
shapes Langfuse writes are keyed by slicing, without parsing (the ingest's hot path).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

UNKNOWN = ""  # the key of a stamp that names no time: before every real one


def parse_time(stamp: Any) -> datetime | None:
    """The UTC moment of an ISO-8601 stamp (naive ones are taken as UTC); None if it names
    none, or one outside what a UTC datetime can hold."""
    try:
        parsed = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError):  # OverflowError: year 1 with a positive offset
        return None


def time_key(stamp: Any) -> str:
    """A text that sorts like the moments of the stamps: ``YYYY-MM-DDTHH:MM:SS.ffffff`` in
    UTC, or ``UNKNOWN``."""
    if type(stamp) is str and len(stamp) in _FAST and stamp[-1] == "Z" and stamp[10] == "T":
        head, tail = _FAST[len(stamp)]
        if stamp[19] == tail[0] and stamp[13] == ":" == stamp[16] and stamp[4] == "-" == stamp[7]:
            return stamp[:head] + tail[1:]
    moment = parse_time(stamp)  # None, "" and non-strings name no time: UNKNOWN
    if moment is None:
        return UNKNOWN
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds")


# length of a UTC stamp ending in "Z" -> (characters kept, char at index 19 + what is appended)
_FAST = {
    24: (23, ".000"),  # 2024-01-01T00:00:00.000Z, the API's shape
    27: (26, "."),  # 2024-01-01T00:00:00.000000Z, the SDK models' with a fraction
    20: (19, "Z.000000"),  # 2024-01-01T00:00:00Z, the SDK models' without one
}


def latest(stamps: list[str]) -> str | None:
    """The stamp naming the newest moment, as given; an unreadable one only if all are."""
    if len(stamps) < 2:
        return stamps[0] if stamps else None
    first = stamps[0]
    if all(s == first for s in stamps):
        return first
    return max(stamps, key=time_key)
