"""Argilla export layouts on disk -> streamed records (conversion rules in ``argilla``).

- 2.x ``Dataset.to_disk`` folder: ``.argilla/settings.json`` + ``records.json`` (one nested
  array, no response status) or, for a live-pull mirror, ``records-*.jsonl`` (nested, status kept);
- 2.x flat form: ``records.to_list(flatten=True)`` as JSONL or one JSON array (a file, or a
  folder of them); the settings come from a ``.argilla/settings.json`` next to the files, else
  the layout is inferred from columns;
- 2.x ``to_datasets()`` / ``to_hub`` layout: ``.argilla/settings.json`` + parquet files (flat
  columns, statuses kept), or a single parquet file;
- 1.x ``FeedbackDataset`` Hub export: ``argilla.yaml`` (or ``argilla.cfg``) + parquet files,
  responses as ``[{user_id, value, status}]`` per question column.

A JSON/JSONL file's form is told by its first row, whatever its name: nested rows have a
``fields`` object, flat rows ``<question>.responses`` columns. The layout (prompt, answers,
question types: ``argilla_layout``) follows the recipe's ``mapping``; a mapping that does not
fit the dataset raises ``MappingMismatch`` when the reader is opened, before any row is read.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from feinschliff.ingest.argilla import nested_from_flat, nested_from_v1, to_record
from feinschliff.ingest.argilla_layout import (
    ArgillaLayout,
    check_columns,
    infer_layout,
    layout_from_settings,
    mapped,
)
from feinschliff.ingest.jsonio import (
    Broken,
    first_char,
    iter_json_array,
    iter_jsonl,
    iter_parquet,
    read_json,
)
from feinschliff.ingest.records import (
    FeedbackRecord,
    Quarantined,
    ReadLog,
    broken_entry,
    quarantined_exc,
)
from feinschliff.ingest.scratch import Scratch
from feinschliff.specs.feedback import SourceMapping

Item = FeedbackRecord | Quarantined
ERRORS = (ValueError, TypeError, KeyError, ValidationError)
JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")


def settings_file(path: Path) -> Path | None:
    folder = path if path.is_dir() else path.parent
    candidate = folder / ".argilla" / "settings.json"
    return candidate if candidate.is_file() else None


def v1_config_file(folder: Path) -> Path | None:
    for name in ("argilla.yaml", "argilla.cfg"):
        if (folder / name).is_file():
            return folder / name
    return None


def parquet_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.parquet") if ".argilla" not in p.parts)


def json_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in JSON_SUFFIXES and not p.name.startswith(".")
    )


def row_form(f: Path) -> str | None:
    """``nested`` or ``flat`` by the first row of a JSON/JSONL file that tells (None: neither)."""
    for row in peek_rows(f):
        if not isinstance(row, dict):
            continue
        if isinstance(row.get("fields"), dict):
            return "nested"
        if any(isinstance(k, str) and k.endswith(".responses") for k in row):
            return "flat"
    return None


def json_forms(folder: Path) -> tuple[list[Path], list[Path]]:
    """A folder's nested and flat JSON/JSONL files, told by content (file names do not
    matter; an empty ``records.json`` / ``records-*.jsonl`` is an empty to_disk or pull)."""
    nested, flat = [], []
    for f in json_files(folder):
        form = row_form(f)
        if form is None and (f.name == "records.json" or _mirror_name(f)):
            form = "nested"
        if form == "nested":
            nested.append(f)
        elif form == "flat":
            flat.append(f)
    return nested, flat


def _mirror_name(f: Path) -> bool:
    return f.name.startswith("records") and f.suffix == ".jsonl"


def nested_files(nested: list[Path]) -> list[Path]:
    """Of a folder's nested files (``json_forms``), those to read: the JSON arrays of a to_disk
    export, else the JSONL files of a pull mirror."""
    arrays = [f for f in nested if f.suffix.lower() == ".json"]
    return arrays or nested


# --------------------------------------------------------------------------- readers


def read_nested(
    folder: Path,
    log: ReadLog,
    scratch: Scratch | None,
    mapping: SourceMapping | None,
    files: list[Path],
) -> Iterator[Item]:
    """``to_disk`` folder (records.json) or a pull mirror (records-*.jsonl, statuses kept;
    the ids read so far live in ``scratch``: a set of them grew with the mirror); ``files``:
    its ``nested_files``."""
    layout = _settings_layout(folder, log, mapping) if mapped(mapping) else None  # fail early
    return _read_nested(folder, log, scratch, mapping, files, layout)


def _read_nested(
    folder: Path,
    log: ReadLog,
    scratch: Scratch | None,
    mapping: SourceMapping | None,
    files: list[Path],
    layout: ArgillaLayout | None,
) -> Iterator[Item]:
    layout = layout or _settings_layout(folder, log, mapping)
    if files and files[0].suffix.lower() == ".json":  # to_disk: one array per file
        for f in files:
            yield from _convert(iter_json_array(f, log.inputs), f, layout, log, _same)
        _note(layout, log)
        return
    # A pull mirror: one file per pull, newest first; a record pulled again supersedes itself,
    # also when its newest version is quarantined (the older one no longer says what the
    # annotators answered).
    assert scratch is not None, "a mirror is read with a scratch store (detection reads none)"
    seen = scratch.name("argilla_seen")
    scratch.db.execute(f"CREATE TABLE {seen} (id TEXT PRIMARY KEY) WITHOUT ROWID")
    add = f"INSERT OR IGNORE INTO {seen} VALUES (?)"

    def first_copy(ident: str) -> bool:
        if scratch.db.execute(add, (ident,)).rowcount:
            return True
        log.stats["argilla_record_superseded_by_newer_pull"] += 1
        return False

    for f in reversed(files):
        yield from _convert(iter_jsonl(f, log.inputs), f, layout, log, _same, keep=first_copy)
    _note(layout, log)


def _settings_layout(path: Path, log: ReadLog, mapping: SourceMapping | None) -> ArgillaLayout:
    settings = settings_file(path)
    assert settings is not None
    return layout_from_settings(read_json(settings, log.inputs), mapping)


def _note(layout: ArgillaLayout | None, log: ReadLog) -> None:
    for text in layout.notes if layout else ():
        log.note(text)


def _raw_id(raw: Any) -> str | None:
    """A quarantined row's record id, when it has one (as ``to_record`` reads it)."""
    if not isinstance(raw, dict):
        return None
    ident = raw.get("id") if raw.get("id") is not None else raw.get("_server_id")
    return None if ident is None or isinstance(ident, dict | list) else str(ident)


def _same(raw: Any, _layout: ArgillaLayout) -> Any:
    return raw


def read_flat(
    path: Path,
    log: ReadLog,
    mapping: SourceMapping | None = None,
    files: list[Path] | None = None,
) -> Iterator[Item]:
    """``to_list(flatten=True)`` rows (JSON/JSONL: ``path`` or ``files`` in the folder ``path``)
    or ``to_datasets()`` parquet rows."""
    files = files or ([path] if path.is_file() else parquet_files(path))
    layout = None
    if mapped(mapping):  # fail before reading a row when the mapping does not fit
        if settings_file(path):
            layout = _settings_layout(path, log, mapping)
        else:
            check_columns((r for f in files for r in peek_rows(f)), mapping)
    return _read_flat(path, log, mapping, files, layout)


def _read_flat(
    path: Path,
    log: ReadLog,
    mapping: SourceMapping | None,
    files: list[Path],
    layout: ArgillaLayout | None,
) -> Iterator[Item]:
    if layout is None and settings_file(path):
        layout = _settings_layout(path, log, mapping)
    if layout is None:
        log.note(
            f"{path.name}: no .argilla/settings.json next to it; fields and question types "
            "were inferred from the columns (prompt: prompt/instruction/question/input/chat)"
        )
    known = layout  # inferred: what one file taught holds for the next
    for f in files:
        known = yield from _convert(
            _rows(f, log), f, layout, log, nested_from_flat, mapping=mapping, known=known
        )
    _note(known, log)


def read_v1(folder: Path, log: ReadLog, mapping: SourceMapping | None = None) -> Iterator[Item]:
    config = v1_config_file(folder)
    assert config is not None
    layout = _v1_layout(config, log, mapping) if mapped(mapping) else None  # fail early
    return _read_v1(folder, config, log, mapping, layout)


def _read_v1(
    folder: Path,
    config: Path,
    log: ReadLog,
    mapping: SourceMapping | None,
    layout: ArgillaLayout | None,
) -> Iterator[Item]:
    layout = layout or _v1_layout(config, log, mapping)
    for f in parquet_files(folder):
        yield from _convert(iter_parquet(f, log.inputs), f, layout, log, nested_from_v1)
    _note(layout, log)


def _v1_layout(config: Path, log: ReadLog, mapping: SourceMapping | None) -> ArgillaLayout:
    log.inputs[str(config)] = _sha(config)
    return layout_from_settings(yaml.safe_load(config.read_text(encoding="utf-8")), mapping)


def _rows(f: Path, log: ReadLog) -> Iterator[tuple[int, Any]]:
    if f.suffix == ".parquet":
        return iter_parquet(f, log.inputs)
    if f.suffix in (".jsonl", ".ndjson") or first_char(f) != "[":
        return iter_jsonl(f, log.inputs)
    return iter_json_array(f, log.inputs)


def _convert(
    rows: Iterator[tuple[int, Any]],
    f: Path,
    layout: ArgillaLayout | None,
    log: ReadLog,
    to_nested: Any,
    *,
    mapping: SourceMapping | None = None,
    known: ArgillaLayout | None = None,
    keep: Callable[[str], bool] | None = None,
) -> Generator[Item, None, ArgillaLayout | None]:
    """Rows -> records, each followed by its responses that were set aside (quarantined
    alone); a row that cannot be read is quarantined whole. ``layout`` None: inferred per row
    from ``known`` (returned as it stands after the file). ``keep(id)``: False drops the
    row's items (a record superseded by a newer pull)."""
    inferred = layout or known
    for i, raw in rows:
        where = f"{f}#{i}" if f.suffix != ".jsonl" else f"{f}:{i}"
        if isinstance(raw, Broken):
            yield broken_entry("argilla", where, raw)
            continue
        items: list[Item]
        try:
            current = inferred
            if layout is None:
                if not isinstance(raw, dict):
                    raise TypeError(f"row is a {type(raw).__name__}, not an object")
                current = infer_layout(raw, inferred, mapping)
            assert current is not None
            nested = to_nested(raw, current)
            stamp = raw.get("updated_at") if isinstance(raw, dict) else None
            record, aside = to_record(nested, current, log, where, timestamp=stamp)
        except ERRORS as exc:
            items, ident = [quarantined_exc("argilla", where, exc, raw)], _raw_id(raw)
        else:
            inferred = current  # only a usable row teaches the layout: a bad one changes nothing
            ident = record.source_id
            items = [record] + [
                quarantined_exc("argilla", where, exc, {"id": ident, "question": q, **v})
                for q, v, exc in aside
            ]
        if keep is not None and ident is not None and not keep(ident):
            continue
        yield from items
    return inferred


def _sha(path: Path) -> str:
    from feinschliff.artifacts import sha256_file

    return sha256_file(path)


def peek_rows(path: Path, n: int = 50) -> list[Any]:
    """The first ``n`` rows of a JSON/JSONL/parquet file (for format detection)."""
    rows: list[Any] = []
    try:
        for _, row in _rows(path, ReadLog()):
            rows.append(row)
            if len(rows) >= n:
                break
    except (OSError, ValueError, ImportError):
        pass
    return rows
