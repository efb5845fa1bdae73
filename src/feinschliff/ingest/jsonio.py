"""Streaming readers for the file formats exports come in: JSON, JSON arrays, JSONL, CSV, parquet.

Every reader yields ``(position, value)`` one element at a time, so memory stays flat however
large the export is, and computes the file's sha256 from the bytes it reads (one pass, no second
read for the manifest). A broken element becomes a ``Broken`` value with the parser's message, so
callers can quarantine it and go on with the next one. No reader returns a string holding a lone
surrogate (``"\\ud83d"``: legal JSON, no UTF-8 text): ``loads`` raises ``LoneSurrogate`` instead.

- ``iter_json_array``: the elements of a top-level JSON array, decoded incrementally (Argilla's
  ``records.json`` and Langfuse UI JSON exports are one array of the whole export);
- ``iter_jsonl``: one value per line;
- ``iter_csv``: one dict per row (Langfuse UI CSV exports quote every field, cells hold JSON);
- ``iter_parquet``: one dict per row, in record batches (Argilla ``to_datasets``/Hub parquet).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

# the codec's home is jsoncodec; callers and tests import them from here
from feinschliff.ingest.jsoncodec import dumps as dumps
from feinschliff.ingest.jsoncodec import loads
from feinschliff.ingest.records import (
    EXTRA_CELLS,
    HEAD_CHARS,
    INVALID_JSON,
    LONE_SURROGATE,
    RAW_CHARS,
    SCRUB_MARGIN,
    LoneSurrogate,
    lone_surrogate_at,
    window,
    without_surrogates,
)

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_PAIR = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _lone_escape(text: str) -> bool:
    """May JSON ``text`` decode to a lone surrogate? Python's json decodes ``"\\ud83d"``
    alone; emojis are escaped pairs, which are no cause. An escaped backslash before a ``u``
    (``\\\\u``) can look like an escape: the caller checks the decoded value then."""
    return "\\\\u" in text or bool(_SURROGATE_ESCAPE.search(_SURROGATE_PAIR.sub("", text)))


CHUNK = 1 << 20
MAX_ELEMENT = 256 << 20  # a single array element larger than this is treated as broken
_WS = " \t\r\n"


@dataclass(frozen=True)
class Broken:
    """A value that could not be decoded, with the reason and a prefix of the raw text.

    ``unreadable``: the reader stopped here (a JSON array, page or CSV cannot be read past a
    syntax error), so the rest of the file, with an unknown number of records, is lost; ``raw``
    then describes the file (size, its first bytes) and ``detail`` holds the parser's message.
    ``clip``: ``raw`` is a ``window`` of the text, to be cut by ``shown`` after scrubbing.
    """

    reason: str
    raw: Any
    detail: str | None = None
    unreadable: bool = False
    clip: bool = False


WHOLE_FILE_LOST = "unreadable file: none of its records could be read"
REST_LOST = "file unreadable from here on: the records after this point were not read"


def unreadable(path: Path, why: str, *, read: int = 0, near: str = "") -> Broken:
    """A file the reader cannot go on with after ``read`` elements: its size and first
    ``HEAD_CHARS`` characters (and the text at the error) as the raw value."""
    keep = HEAD_CHARS + SCRUB_MARGIN
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(keep * 4).decode("utf-8", errors="replace")[:keep]
    except OSError:
        size, head = None, ""
    raw: dict[str, Any] = {"file": str(path), "bytes": size, "head": head}
    if near:
        raw["near_error"] = window(near)
    if read:
        why = f"after {read} elements: {why}"
    return Broken(REST_LOST if read else WHOLE_FILE_LOST, raw, why, unreadable=True, clip=True)


class HashingReader(io.RawIOBase):
    """Wraps a binary file and hashes every byte read through it."""

    def __init__(self, f: IO[bytes]):
        self._f = f
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._f.readinto(buffer)
        if n:
            self.sha256.update(memoryview(buffer)[:n])
        return n or 0

    def drain(self) -> str:
        """Hash whatever was not read yet; returns the hex digest of the whole file."""
        while chunk := self._f.read(CHUNK):
            self.sha256.update(chunk)
        return self.sha256.hexdigest()


def read_json(path: Path, inputs: dict[str, str]) -> Any:
    """A whole (small) JSON file, e.g. one API page of at most 1000 rows."""
    data = path.read_bytes()
    inputs[str(path)] = hashlib.sha256(data).hexdigest()
    return loads(data)


def first_char(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(4096).decode("utf-8", errors="replace").lstrip(_WS + "\ufeff")
    return head[:1]


def head_of_page(path: Path, size: int = 1 << 16) -> Iterator[Any] | None:
    """The rows that fit in the first ``size`` bytes of an API page ``{"data": [...], ...}``,
    decoded lazily, or None when the head does not look like one (then parse the whole file)."""
    with path.open("rb") as f:
        head = f.read(size).decode("utf-8", errors="ignore")
    bracket = data_array_start(head)
    if bracket is None:
        return None
    decoder = json.JSONDecoder()
    try:
        first, pos = decoder.raw_decode(head, _skip(head, bracket + 1))
    except json.JSONDecodeError:
        return None  # the first row is larger than the head, or the page is empty

    def rows() -> Iterator[Any]:
        nonlocal pos
        yield first
        while head[_skip(head, pos) : _skip(head, pos) + 1] not in ("]", ""):
            try:
                value, pos = decoder.raw_decode(head, _skip(head, pos))
            except json.JSONDecodeError:
                return
            yield value

    return rows()


def data_array_start(head: str) -> int | None:
    """The position of the ``[`` of the top-level ``data`` array in the text ``head`` of a JSON
    object, when the members before it are complete in ``head``; else None."""
    decoder, pos = json.JSONDecoder(), _skip(head, 0, _WS + "\ufeff")
    if head[pos : pos + 1] != "{":
        return None
    pos += 1
    while True:
        try:
            key, pos = decoder.raw_decode(head, _skip(head, pos, _WS))
            pos = _skip(head, pos, _WS)
            if not isinstance(key, str) or head[pos : pos + 1] != ":":
                return None
            pos = _skip(head, pos + 1, _WS)
            if key == "data":
                return pos if head[pos : pos + 1] == "[" else None
            _, pos = decoder.raw_decode(head, pos)  # a member before the rows (meta)
        except json.JSONDecodeError:
            return None
        pos = _skip(head, pos, _WS)
        if head[pos : pos + 1] != ",":
            return None
        pos += 1


def _skip(text: str, pos: int, chars: str = _WS + ",") -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def iter_json_array(
    path: Path, inputs: dict[str, str], start: int | None = None
) -> Iterator[tuple[int, Any]]:
    """Elements of a top-level JSON array, decoded one at a time with ``raw_decode``; with
    ``start`` (``page_data_start``) those of an API page's ``data`` array, what follows it
    unread, and a lone surrogate reported as ``read_json`` of the page reports it."""
    decoder = json.JSONDecoder()
    with path.open("rb") as raw:
        hashing = HashingReader(raw)
        text = io.TextIOWrapper(io.BufferedReader(hashing, CHUNK), encoding="utf-8-sig")
        buf, pos, index, eof, peeked = "", 0, 0, False, False

        def fill() -> bool:
            nonlocal buf, pos
            chunk = text.read(CHUNK)
            buf = buf[pos:] + chunk
            pos = 0
            return bool(chunk)

        def skip(chars: str) -> None:
            nonlocal pos, eof
            while True:
                while pos < len(buf) and buf[pos] in chars:
                    pos += 1
                if pos < len(buf) or eof:
                    return
                eof = not fill()

        def near() -> str:
            return buf[pos : pos + RAW_CHARS + SCRUB_MARGIN]

        try:
            while start is not None and len(buf) <= start and fill():
                pass  # the members before ``data`` fit in the first chunks
            pos = start or 0
            skip(_WS)
            if buf[pos : pos + 1] != "[":
                yield 0, unreadable(path, "not a JSON array", near=near())
                return
            pos += 1
            while True:
                skip(_WS)
                if buf[pos : pos + 1] == "]" or (eof and pos >= len(buf)):
                    return
                while True:
                    try:
                        value, end = decoder.raw_decode(buf, pos)
                        if end < len(buf) or eof:
                            break
                        eof = not fill()  # a number may continue in the next chunk
                    except RecursionError:  # hostile nesting: skip the element, go on
                        end = _value_end(buf, pos)
                        if end is not None:
                            value = Broken("JSON nested too deeply", near(), clip=True)
                            break
                        if eof or len(buf) - pos > MAX_ELEMENT:
                            why = "JSON nested too deeply"
                            yield index, unreadable(path, why, read=index, near=near())
                            return
                        eof = not fill()
                    except json.JSONDecodeError as exc:
                        if eof or len(buf) - pos > MAX_ELEMENT:
                            # the array cannot be resynchronised after a syntax error
                            why = f"invalid JSON: {exc.msg}"
                            yield index, unreadable(path, why, read=index, near=near())
                            return
                        eof = not fill()
                if _SURROGATE_ESCAPE.search(buf, pos, end) and _lone_escape(buf[pos:end]):
                    at = lone_surrogate_at(value)
                    if at is not None and start is not None:
                        value = Broken(LONE_SURROGATE, without_surrogates(value), f"at {at}")
                    elif at is not None:  # the element's own text, not the next ones'
                        text = buf[pos : min(end, pos + RAW_CHARS + SCRUB_MARGIN)]
                        value = Broken(LONE_SURROGATE, text, f"at {at}", clip=True)
                yield index, value
                index += 1
                pos = end
                skip(_WS)
                if buf[pos : pos + 1] == ",":
                    pos += 1
                elif buf[pos : pos + 1] != "]":
                    why = "expected ',' or ']' between elements"
                    yield index, unreadable(path, why, read=index, near=near())
                    return
        except UnicodeDecodeError as exc:
            yield index, unreadable(path, f"not UTF-8: {exc}", read=index)
        except GeneratorExit:  # a caller that only peeked: no fingerprint, no full read
            peeked = True
            raise
        finally:
            if not peeked:
                inputs[str(path)] = hashing.drain()


def _value_end(text: str, pos: int) -> int | None:
    """End of the array or object starting at ``pos`` (brackets counted, strings skipped), or
    None when it does not end within ``text``."""
    depth, i, n = 0, pos, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def iter_jsonl(path: Path, inputs: dict[str, str]) -> Iterator[tuple[int, Any]]:
    """One JSON value per line (blank lines skipped); line numbers start at 1."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        try:
            for lineno, line in enumerate(f, start=1):
                h.update(line)
                if not line.strip():
                    continue
                try:
                    value = loads(line)
                except ValueError as exc:
                    text = window(line.decode("utf-8", errors="replace"))
                    if isinstance(exc, LoneSurrogate):
                        value = Broken(LONE_SURROGATE, text, f"at {exc.at}", clip=True)
                    else:  # the parser's message (with its position) as the detail
                        value = Broken(INVALID_JSON, text, str(exc), clip=True)
                yield lineno, value
        except GeneratorExit:
            return
    inputs[str(path)] = h.hexdigest()


def iter_csv(path: Path, inputs: dict[str, str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV file with a header line, as dicts; row numbers start at 2 (after the header)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # cells hold whole JSON conversations
    with path.open("rb") as raw:
        hashing = HashingReader(raw)
        text = io.TextIOWrapper(io.BufferedReader(hashing, CHUNK), encoding="utf-8-sig", newline="")
        reader = csv.DictReader(text)
        read = 0
        try:
            for row in reader:
                if None in row:  # DictReader puts the cells past the header under key None
                    row = _extra_cells(row, len(reader.fieldnames or ()))  # type: ignore[assignment]
                yield reader.line_num, row
                read += 1
        except (csv.Error, UnicodeDecodeError) as exc:
            broken = unreadable(path, f"unreadable CSV: {exc}", read=read)
            yield reader.line_num, broken  # type: ignore[misc]
        except GeneratorExit:
            return
        inputs[str(path)] = hashing.drain()


def _extra_cells(row: dict[Any, Any], header: int) -> Broken:
    extra = row.pop(None)
    row["(cells past the header)"] = extra
    return Broken(EXTRA_CELLS, row, f"{header + len(extra)} cells, the header has {header}")


def csv_header(path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig", newline="", errors="replace") as f:
        try:
            return next(csv.reader(f))
        except (StopIteration, csv.Error):
            return []


def iter_parquet(path: Path, inputs: dict[str, str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a parquet file, read in record batches of 1024 rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    inputs[str(path)] = _sha256(path)
    index = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield index, row
                index += 1
    except (OSError, pa.ArrowException) as exc:
        broken = unreadable(path, f"unreadable parquet: {exc}", read=index)
        yield index, broken  # type: ignore[misc]


def parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
