"""Small references that stages pass to each other: a path plus a content hash.

Stages never hand datasets or models around. A ``*Ref`` names a directory and the sha256 of its
content, so an orchestrator can build cache keys from it and a rerun can skip finished work.
A stage output directory is *complete* only when its ``.complete`` marker exists; the marker is
written last and records the content hash, so a half-written directory is never reused.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)

COMPLETE = ".complete"


class Ref(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str
    sha256: str

    @property
    def dir(self) -> Path:
        return Path(self.path)


class DatasetRef(Ref):
    """Output of ingest: sft.jsonl, preference.jsonl, manifest.json, ..."""


# A dataset's files that describe the run, not its rows: a scheduled live pull that found
# nothing new writes new watermarks, fetch counts and input hashes into them.
DATASET_BOOKKEEPING = ("manifest.json", "README.md", "quarantine.jsonl")


def rows_sha256(data: DatasetRef) -> str:
    """sha256 of the rows a dataset gives training and evaluation (every file but the
    bookkeeping), without where each row was read (``provenance.location``): what later
    stages' cache keys and the flow's run key use, so unchanged rows reuse their results. A
    live pull writes every pull to a new mirror file (an Argilla snapshot, a Langfuse batch
    re-fetching its lookback window), which moved the locations of unchanged rows: every
    scheduled run retrained, and a rerun after a crash never resumed its run."""
    skip = {COMPLETE, ".inputs", *DATASET_BOOKKEEPING}
    files = sorted(p for p in data.dir.rglob("*") if p.is_file())
    stamp = tuple(
        (p.relative_to(data.dir).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in files
        if not skip & set(p.relative_to(data.dir).parts)
    )
    return _rows_sha256(str(data.dir), stamp)


@functools.lru_cache(maxsize=32)
def _rows_sha256(root: str, files: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for rel, _, _ in files:
        path = Path(root) / rel
        digest = _rows_digest(path) if rel.endswith(".jsonl") else sha256_file(path)
        h.update(_name_bytes(rel) + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


def _rows_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                h.update(line)
                continue
            prov = row.get("provenance") if isinstance(row, dict) else None
            if isinstance(prov, dict) and "location" in prov:
                row = {**row, "provenance": {k: v for k, v in prov.items() if k != "location"}}
                line = json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
            h.update(line)
    return h.hexdigest()


class AdapterRef(Ref):
    """Output of train: adapter/ (PEFT) and metrics.json."""


class ReportRef(Ref):
    """Output of evaluate: report.json."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_tree(
    root: Path, exclude: Iterable[str] = (COMPLETE, ".inputs", "checkpoints", "decision.json")
) -> str:
    """sha256 over the relative paths and contents of every file below ``root``.

    Excluded: markers, checkpoints (resumable state) and the gate's ``decision.json``, which is
    written next to a finished report without making the report stale.
    """
    skip = set(exclude)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in skip or any(part in skip for part in path.relative_to(root).parts):
            continue
        h.update(_name_bytes(rel) + b"\0" + sha256_file(path).encode() + b"\n")
    return h.hexdigest()


def _name_bytes(rel: str) -> bytes:
    """A relative path as hashed: UTF-8; a name that is no UTF-8 on disk (a zip unpacked from
    elsewhere) as its own bytes instead of a UnicodeEncodeError. Not ``os.fsencode``: the
    locale must not change a hash."""
    return rel.encode("utf-8", "surrogateescape")


def mark_complete(root: Path, **info: Any) -> str:
    """Hash ``root`` and write its completeness marker last; returns the hash."""
    digest = hash_tree(root)
    payload = {"sha256": digest, **info}
    (root / COMPLETE).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return digest


def completed_hash(root: Path) -> str | None:
    """The recorded hash when ``root`` is complete and unchanged since, else None."""
    marker = root / COMPLETE
    if not marker.exists():
        return None
    try:
        recorded = json.loads(marker.read_text())["sha256"]
    except (ValueError, KeyError):
        return None
    return recorded if hash_tree(root) == recorded else None


def reusable(root: Path, key: str) -> str | None:
    """Hash of a finished output made from the same inputs (``key``), so a rerun can skip it."""
    digest = completed_hash(root)
    if digest is None:
        return None
    recorded = json.loads((root / COMPLETE).read_text()).get("key")
    return digest if recorded == key else None


class OutputInUse(RuntimeError):
    """An output folder that holds files no stage wrote (it is never deleted), or a path that
    cannot be one (a file, a path under a file, a folder the OS refuses to create)."""


def prepare_out(root: Path, key: str, stage: str | None = None) -> None:
    """Make ``root`` ready for a run of ``stage`` with inputs ``key``.

    Leftovers of the *same* inputs are kept (a killed training resumes from its checkpoints);
    leftovers of other inputs are removed, so nothing from an older configuration leaks in.
    A non-empty folder without a stage's ``.inputs`` stamp (someone's data, an ingest output
    given as ``--out``) is refused, not wiped, and so is a finished output of another stage
    (``evaluate --out`` given the train output would have deleted the adapter it evaluates).
    """
    refuse_foreign_out(root, stage)
    stamp = root / ".inputs"
    recorded_key, _ = _read_stamp(stamp)
    if root.exists() and recorded_key != key:
        # Loud, because this is where a killed training's checkpoints go when the recipe, the
        # data or the code (a hotfix between crash and rerun) changed in the meantime.
        if any(p != stamp for p in root.iterdir()):
            log.warning("%s: discarding leftovers of a run with other inputs or code", root)
        _discard_all_but(root, stamp)
    make_out_dir(root)
    stamp.write_text(key + "\n" + (f"{stage}\n" if stage else ""))


def refuse_foreign_out(root: Path, stage: str | None = None) -> None:
    """The refusals of ``prepare_out``, without writing anything: a stage calls it before
    minutes of model loading, ``prepare_out`` again before it writes."""
    stamp = root / ".inputs"
    refuse_non_folder(root)
    other = finished_stage(root)
    if stage is not None and other is not None and other != stage:
        raise OutputInUse(
            f"{root} holds a finished {other} output; {stage} would replace it: "
            "choose a new or empty output folder (nothing was deleted)"
        )
    if root.exists() and not stamp.exists() and any(root.iterdir()):
        # ingest writes no stamp: its finished output is named as such, not as foreign files
        held = (
            f"holds a finished {other} output"
            if other
            else "is not empty and no feinschliff stage wrote it (no .inputs stamp)"
        )
        raise OutputInUse(
            f"{root} {held}: choose a new or empty output folder (nothing was deleted)"
        )
    recorded_key, recorded_stage = _read_stamp(stamp)
    if stage is not None and recorded_stage is not None and recorded_stage != stage:
        # a killed training has no .complete yet, but its checkpoints are what its rerun
        # resumes from
        raise OutputInUse(
            f"{root} holds an unfinished {recorded_stage} run; {stage} would delete it: "
            "choose a new or empty output folder (nothing was deleted)"
        )


def refuse_non_folder(root: Path) -> None:
    """An output path that is a file, or lies under one (``--out notes.txt/run``), can never
    be a folder."""
    if root.exists() and not root.is_dir():
        raise OutputInUse(f"{root} is a file, not a folder: choose a new or empty output folder")
    for parent in root.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputInUse(
                    f"{root}: {parent} is a file, not a folder: choose another output folder"
                )
            return


def make_out_dir(root: Path) -> None:
    """Create an output folder; one the OS refuses (no permission, a read-only disk) is a
    wrong output path, said in one line (``OutputInUse``), not an OS error's traceback."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputInUse(
            f"cannot create the output folder {root}: {exc.strerror or exc}: "
            "choose another output folder"
        ) from exc


def _discard_all_but(root: Path, stamp: Path) -> None:
    """Delete ``root``'s content but its old ``.inputs`` stamp (the caller overwrites it), the
    ``.complete`` marker first: a run killed while deleting (gigabytes of checkpoints take a
    while) leaves a folder stamped with the old inputs, which its rerun discards again.
    Deleting the folder whole could take the stamp first, and the rerun then refused the
    unstamped leftovers as a folder no stage wrote, until someone deleted them by hand."""
    (root / COMPLETE).unlink(missing_ok=True)
    for child in root.iterdir():
        if child == stamp:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _read_stamp(stamp: Path) -> tuple[str | None, str | None]:
    """(inputs key, stage) of a ``.inputs`` stamp: the key on its first line, the stage that
    wrote it on the second (stamps of older versions have none)."""
    try:
        lines = stamp.read_text().splitlines()
    except OSError:
        return None, None
    key = lines[0].strip() if lines else None
    stage = lines[1].strip() if len(lines) > 1 and lines[1].strip() else None
    return key, stage


def finished_stage(root: Path) -> str | None:
    """The stage named by ``root``'s ``.complete`` marker (None: no marker, or none readable)."""
    try:
        stage = json.loads((root / COMPLETE).read_text()).get("stage")
    except (OSError, ValueError, AttributeError):
        return None
    return stage if isinstance(stage, str) else None


# The libraries whose versions change what a stage computes (an lm-eval upgrade changes the
# scores, a TRL upgrade the training): part of the code version, as our own source is.
RESULT_LIBRARIES = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "lm_eval",
    "distilabel",
    "presidio-analyzer",
)


@functools.cache
def code_version() -> str:
    """The package version plus a hash of its source and of the versions of the libraries
    that compute results: part of every stage's cache key, so a code change (an editable
    install, a hotfix without a version bump) or a library upgrade never reuses results
    computed by older code."""
    from importlib import metadata

    from feinschliff import __version__

    package = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    for name in RESULT_LIBRARIES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "absent"
        h.update(f"{name}=={version}\0".encode())
    return f"{__version__}+{h.hexdigest()[:12]}"


def input_key(*parts: Any) -> str:
    """A stable hash over stage inputs (recipe section hashes, input refs, code version)."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False).encode()
    return sha256_bytes(blob)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(
            json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n",
            encoding="utf-8",
        )
        tmp.replace(path)
    except OSError as exc:  # a full disk: name the file, leave no half-written .tmp
        tmp.unlink(missing_ok=True)
        if exc.filename is None:
            exc.filename = str(path)
        raise


def jsonl_lines(text: str) -> list[str]:
    """The non-blank lines of JSONL text, split at ``\n`` only: ``str.splitlines`` also splits
    at U+2028/U+2029/U+0085, which JSON writers with ``ensure_ascii=False`` (and orjson) leave
    raw inside strings, so a record holding one would be cut in two and lost."""
    return [line for line in text.split("\n") if line.strip()]


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created, with its folder) while the block runs; the
    kernel drops it when the holder dies, so a killed process never leaves a stale lock. The
    holder writes who it is into the file, so a wait names it (a hung holder, not a hang)."""
    import fcntl

    from feinschliff.lock_holder import holder_line

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read(300).strip() or "another process"
            log.warning("waiting for %s, held by %s", path, holder)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.truncate(0)
            fh.write(holder_line() + "\n")
            fh.flush()
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def append_line(path: Path, line: str) -> None:
    """Append one JSONL line and fsync it. A line torn by a kill (no newline at the end of the
    file) is ended first, so the new entry starts on a line of its own and readers can skip
    the torn one."""
    with path.open("a", encoding="utf-8") as f:
        if f.tell() and not _ends_with_newline(path):
            f.write("\n")
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
