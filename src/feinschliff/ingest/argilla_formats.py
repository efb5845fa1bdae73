"""Argilla export layouts on disk -> streamed records (conversion rules in ``argilla``).

- 2.x ``Dataset.to_disk`` folder: ``.argilla/settings.json`` + ``records.json`` (one nested
  array, no response status) or, for a live-pull mirror, ``records-*.jsonl`` (nested, status kept);
- 2.x flat form: ``records.to_list(flatten=True)`` as JSONL or one JSON array; the settings come
  from a ``.argilla/settings.json`` next to the file, else the layout is inferred from columns;
- 2.x ``to_datasets()`` / ``to_hub`` layout: ``.argilla/settings.json`` + parquet files (flat
  columns, statuses kept), or a single parquet file;
- 1.x ``FeedbackDataset`` Hub export: ``argilla.yaml`` (or ``argilla.cfg``) + parquet files,
  responses as ``[{user_id, value, status}]`` per question column.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from feinschliff.ingest.argilla import (
    ArgillaLayout,
    infer_layout,
    layout_from_settings,
    nested_from_flat,
    nested_from_v1,
    to_record,
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


def nested_files(folder: Path) -> list[Path]:
    if (folder / "records.json").is_file():
        return [folder / "records.json"]
    return sorted(folder.glob("records*.jsonl"))


# --------------------------------------------------------------------------- readers


def read_nested(
    folder: Path, log: ReadLog, scratch: Scratch | None, mapping: SourceMapping | None = None
) -> Iterator[Item]:
    """``to_disk`` folder (records.json) or a pull mirror (records-*.jsonl, statuses kept;
    the ids read so far live in ``scratch``: a set of them grew with the mirror)."""
    settings = settings_file(folder)
    assert settings is not None
    layout = layout_from_settings(read_json(settings, log.inputs))
    files = nested_files(folder)
    if files and files[0].suffix == ".json":  # to_disk: one array
        yield from _convert(iter_json_array(files[0], log.inputs), files[0], layout, log, _same)
        return
    # A pull mirror: one file per pull, newest first; a record pulled again supersedes itself,
    # also when its newest version is quarantined (the older one no longer says what the
    # annotators answered).
    assert scratch is not None, "a mirror is read with a scratch store (detection reads none)"
    seen = scratch.name("argilla_seen")
    scratch.db.execute(f"CREATE TABLE {seen} (id TEXT PRIMARY KEY) WITHOUT ROWID")
    add = f"INSERT OR IGNORE INTO {seen} VALUES (?)"
    for f in reversed(files):
        for item in _convert(iter_jsonl(f, log.inputs), f, layout, log, _same):
            ident = item.source_id if isinstance(item, FeedbackRecord) else _raw_id(item.raw)
            if ident is not None and scratch.db.execute(add, (ident,)).rowcount == 0:
                log.stats["argilla_record_superseded_by_newer_pull"] += 1
                continue
            yield item


def _raw_id(raw: Any) -> str | None:
    """A quarantined row's record id, when it has one (as ``to_record`` reads it)."""
    if not isinstance(raw, dict):
        return None
    ident = raw.get("id") if raw.get("id") is not None else raw.get("_server_id")
    return None if ident is None or isinstance(ident, dict | list) else str(ident)


def _same(raw: Any, _layout: ArgillaLayout) -> Any:
    return raw


def read_flat(path: Path, log: ReadLog, mapping: SourceMapping | None = None) -> Iterator[Item]:
    """``to_list(flatten=True)`` rows (JSON/JSONL) or ``to_datasets()`` parquet rows."""
    settings = settings_file(path)
    layout = layout_from_settings(read_json(settings, log.inputs)) if settings else None
    if layout is None:
        log.note(
            f"{path.name}: no .argilla/settings.json next to it; fields and question types "
            "were inferred from the columns (prompt: prompt/instruction/question/input/chat)"
        )
    files = [path] if path.is_file() else parquet_files(path)
    for f in files:
        yield from _convert(_rows(f, log), f, layout, log, nested_from_flat)


def read_v1(folder: Path, log: ReadLog, mapping: SourceMapping | None = None) -> Iterator[Item]:
    config = v1_config_file(folder)
    assert config is not None
    log.inputs[str(config)] = _sha(config)
    layout = layout_from_settings(yaml.safe_load(config.read_text(encoding="utf-8")))
    for f in parquet_files(folder):
        yield from _convert(iter_parquet(f, log.inputs), f, layout, log, nested_from_v1)


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
) -> Iterator[Item]:
    inferred = layout
    for i, raw in rows:
        where = f"{f}#{i}" if f.suffix != ".jsonl" else f"{f}:{i}"
        if isinstance(raw, Broken):
            yield broken_entry("argilla", where, raw)
            continue
        try:
            current = inferred
            if layout is None:
                if not isinstance(raw, dict):
                    raise TypeError(f"row is a {type(raw).__name__}, not an object")
                current = infer_layout(raw, inferred)
            assert current is not None
            nested = to_nested(raw, current)
            stamp = raw.get("updated_at") if isinstance(raw, dict) else None
            record = to_record(nested, current, log, where, timestamp=stamp)
        except ERRORS as exc:
            yield quarantined_exc("argilla", where, exc, raw)
            continue
        inferred = current  # only a usable row teaches the layout: a bad one changes nothing
        yield record


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
