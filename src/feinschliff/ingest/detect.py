"""Recognise what an export path holds and open the matching reader.

``open_export(kind, path, ...)`` returns a ``SourceRead`` (format name + a record iterator) or
raises ``UnknownExport`` naming what was found: the files, the first row's keys, and whether it
looks like the *other* tool's export. Detection looks at structure (marker files, the keys of
the first row or page), never at file names alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from feinschliff.ingest.argilla_formats import (
    json_files,
    json_forms,
    nested_files,
    parquet_files,
    peek_rows,
    read_flat,
    read_nested,
    read_v1,
    row_form,
    settings_file,
    v1_config_file,
)
from feinschliff.ingest.argilla_layout import MappingMismatch
from feinschliff.ingest.jsonio import Broken, parquet_columns
from feinschliff.ingest.langfuse import Submit, read_observations
from feinschliff.ingest.langfuse_exports import read_exports
from feinschliff.ingest.langfuse_rows import SUFFIXES, Item, file_kind
from feinschliff.ingest.records import ReadLog
from feinschliff.ingest.scratch import Scratch
from feinschliff.specs.feedback import DerivationRules, SourceMapping

# An unreadable file (a truncated page) is read with the observations: its quarantine entry
# fails the stage, instead of the file being left out as "not an export file".
JOINED = {"observation", "score", "unreadable"}
SELF_CONTAINED = {"trace_full", "trace_export", "dataset_item", "trace_ids"}


class UnknownExport(ValueError):
    """The path holds nothing this reader recognises; the message says what it found."""


@dataclass
class SourceRead:
    format: str
    items: Iterator[Item]


def open_export(
    kind: str,
    path: Path,
    log: ReadLog,
    rules: DerivationRules,
    scratch: Scratch,
    parallel: Submit | None = None,
    mirror: bool = False,
    partial: bool = False,
    mapping: SourceMapping | None = None,
) -> SourceRead:
    """``parallel``: run Langfuse observation files in worker processes (``RowPipeline.submit``);
    the items then include ``PreparedRecords``. ``mirror``: ``path`` is a pull mirror (one
    folder per pull): an observation fetched again (the lookback re-fetches the last hour,
    e.g. a generation first pulled while it was still streaming) counts in its newest copy.
    ``partial``: the export holds only some observations (``langfuse.read_observations``).
    ``mapping``: the recipe's ``sources[i].mapping`` (None: the defaults)."""
    mapping = mapping or SourceMapping()
    if not path.exists():
        raise UnknownExport(f"{path} does not exist")
    if kind == "argilla":
        try:
            found = _argilla(path, log, scratch, mapping)
        except MappingMismatch as exc:  # the recipe's mapping does not fit: fail, say why
            raise UnknownExport(f"{path}: {exc}") from exc
        if found is None:
            hint = _argilla_part(path) or (
                "; it looks like a Langfuse export" if _looks_like_langfuse(path) else ""
            )
            raise UnknownExport(
                f"{path}: not an Argilla export (a to_disk folder, a flat to_list JSON/JSONL, "
                f"to_datasets/Hub parquet, or a 1.x argilla.yaml + parquet folder); "
                f"found {_describe(path)}{hint}"
            )
        return found
    joined, exports, seen, score_files = _langfuse_files(path)
    if mirror:  # observations of newer pulls first: the first copy read wins
        joined = [f for f in joined if f in score_files] + _newest_pull_first(
            [f for f in joined if f not in score_files]
        )
    if not joined and not exports:
        hint = "; it looks like an Argilla export" if _argilla(path, ReadLog(), None) else ""
        raise UnknownExport(
            f"{path}: no Langfuse observations, scores, traces, UI exports or dataset items "
            f"found ({_describe(path)}{'; ' + '; '.join(seen) if seen else ''}){hint}"
        )

    def items() -> Iterator[Item]:
        if joined:
            yield from read_observations(
                joined, log, rules, scratch, score_files, parallel, partial=partial, mapping=mapping
            )
        if exports:
            yield from read_exports(exports, log, rules, mapping=mapping)

    names = "+".join(
        k
        for k, on in (("langfuse-observations+scores", joined), ("langfuse-exports", exports))
        if on
    )
    return SourceRead(names, items())


def _argilla(
    path: Path, log: ReadLog, scratch: Scratch | None, mapping: SourceMapping | None = None
) -> SourceRead | None:
    """``scratch``: None when only detecting (the reader is never iterated). JSON/JSONL files
    are told nested or flat by their first row, whatever their names."""
    if path.is_dir():
        nested, flat = json_forms(path)
        if settings_file(path) and nested:
            files = nested_files(nested)
            fmt = "argilla-2-to-disk" if files[0].suffix.lower() == ".json" else "argilla-2-mirror"
            return SourceRead(fmt, read_nested(path, log, scratch, mapping=mapping, files=files))
        if settings_file(path) and parquet_files(path):
            return SourceRead("argilla-2-hub-parquet", read_flat(path, log, mapping=mapping))
        if v1_config_file(path) and parquet_files(path):
            return SourceRead("argilla-1-hub", read_v1(path, log, mapping=mapping))
        if flat and not nested:  # a folder of flat files (its settings used when present)
            return SourceRead("argilla-2-flat", read_flat(path, log, mapping=mapping, files=flat))
        return None
    if path.suffix == ".parquet":
        columns = parquet_columns(path)
        if any(c.endswith(".responses") for c in columns):
            return SourceRead("argilla-2-flat-parquet", read_flat(path, log, mapping=mapping))
        return None
    if path.suffix.lower() in (".json", ".jsonl", ".ndjson") and row_form(path) == "flat":
        return SourceRead("argilla-2-flat", read_flat(path, log, mapping=mapping))
    return None  # a nested file needs its settings: point at the to_disk folder


def _argilla_part(path: Path) -> str:
    """What is missing when ``path`` is part of an Argilla export (as a hint), else ''."""
    if path.is_dir():
        if settings_file(path) or v1_config_file(path):
            return ""
        nested = [f.name for f in json_files(path) if _nested(f)]
        flat = [f.name for f in parquet_files(path)[:1] if _flat_parquet(f)]
        if not nested + flat:
            return ""
        return (
            f"; {path / '.argilla' / 'settings.json'} is missing next to "
            f"{', '.join(nested + flat)} (copied without the hidden .argilla folder?)"
        )
    if not _nested(path):
        return ""
    if settings_file(path):  # a to_disk folder's records: read with the settings beside them
        return (
            f"; this is the {path.name} of an Argilla to_disk export: pass its folder {path.parent}"
        )
    return (
        f"; {path.name} holds nested Argilla records, which are read with their dataset's "
        "settings: pass the to_disk folder holding it and .argilla/settings.json"
    )


def _nested(f: Path) -> bool:
    return f.suffix.lower() in (".json", ".jsonl") and row_form(f) == "nested"


def _flat_parquet(f: Path) -> bool:
    try:
        return any(c.endswith(".responses") for c in parquet_columns(f))
    except (OSError, ValueError, ImportError):
        return False


def _newest_pull_first(files: list[Path]) -> list[Path]:
    """Files of a pull mirror, the newest pull's folder first, pages in order within one.
    (Scores stay oldest first: a score stored again replaces the older copy.)"""
    return sorted(files, key=lambda f: f.parent.name, reverse=True)  # stable: pages keep order


def _looks_like_langfuse(path: Path) -> bool:
    """Langfuse rows were recognised: an unreadable file (counted with the joined ones so
    Langfuse ingest quarantines it) says nothing about which tool wrote it."""
    joined, exports, _, _ = _langfuse_files(path)
    return bool(exports) or any(file_kind(f, ReadLog())[0] != "unreadable" for f in joined)


def _langfuse_files(path: Path) -> tuple[list[Path], list[Path], list[str], set[Path]]:
    """Files with observation/score rows, self-contained exports, descriptions of the rest,
    and which of the first are score files (read before the observations)."""
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    )
    joined, exports, seen, scores = [], [], [], set()
    for f in files:
        kind, what = file_kind(f, ReadLog())
        if kind in JOINED:
            joined.append(f)
            if kind == "score":
                scores.add(f)
        elif kind in SELF_CONTAINED:
            exports.append(f)
        else:
            seen.append(what)
    return joined, exports, seen[:5], scores


def _describe(path: Path) -> str:
    if path.is_file():
        rows = peek_rows(path, 1) if path.suffix.lower() != ".csv" else []
        row = rows[0] if rows else None
        if isinstance(row, dict):
            return f"a {path.suffix} file whose first row has keys {sorted(row)[:10]}"
        if isinstance(row, Broken):
            return f"a {path.suffix} file that does not parse ({row.reason})"
        return f"a file of {path.stat().st_size} bytes"
    names = sorted(p.name for p in path.iterdir())[:8]
    return f"{names}" if names else "an empty directory"
