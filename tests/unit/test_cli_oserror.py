"""OS errors (a full disk, a read-only one, an unreadable file, an unwritable FEINSCHLIFF_HOME)
are one line naming the path and the cause, with README's exit codes, not a traceback wall;
an ingest that fails on a full disk leaves no ``.tmp`` file and records its failure where it
can; `run` names the stage and does not retry what stays so; Ctrl-C says how to go on.

These conditions are simulated at a boundary (the sink's file object, ``Path.unlink``,
``Path.open``, ``os.access``): mounting a small or read-only tmpfs needs root, and root reads
a chmod-000 file anyway, while CI runs unprivileged."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import types
from pathlib import Path

import pytest

from feinschliff.ingest import run_ingest
from feinschliff.ingest.outputs import JsonlSink
from feinschliff.recipe import FeedbackSpec
from tests.cli_helpers import run_cli, run_main
from tests.unit.adapter_factory import make_base

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")
LANGFUSE = ROOT / "data" / "samples" / "langfuse"


class _Disk:
    """A disk with ``room`` bytes free for the ingest's JSONL sinks. Once full, every write
    raises ENOSPC, and so does closing a file written to before (its buffer's flush), as on a
    real full disk; the real file is closed all the same."""

    def __init__(self, room: int):
        self.room = room


class _FileOn:
    def __init__(self, f, disk: _Disk):
        self.f, self.disk, self.wrote = f, disk, False

    def write(self, data: bytes) -> int:
        if len(data) > self.disk.room:
            self.disk.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.disk.room -= len(data)
        self.wrote = True
        return self.f.write(data)

    def close(self) -> None:
        self.f.close()
        if self.wrote and self.disk.room == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def full_disk(monkeypatch):
    disk = _Disk(room=4000)  # a few rows fit, then the disk is full
    real_init = JsonlSink.__init__

    def init(self, path: Path) -> None:
        real_init(self, path)
        self._f = _FileOn(self._f, disk)

    monkeypatch.setattr(JsonlSink, "__init__", init)
    return disk


def _spec() -> FeedbackSpec:
    return FeedbackSpec.model_validate(
        {"sources": [{"kind": "langfuse", "path": str(LANGFUSE)}], "pii": {"mode": "off"}}
    )


def test_a_full_disk_names_the_file_leaves_no_tmp_and_records_the_failure(full_disk, tmp_path):
    """The sink's abort closed first and, when that flush raised ENOSPC again, never unlinked
    its ``.tmp``; the other sinks were not aborted either. The error named no file."""
    out = tmp_path / "ing"
    with pytest.raises(OSError) as raised:
        run_ingest(_spec(), out)
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename is not None
    assert Path(raised.value.filename).parent in (out, out / "heldout")
    assert not [p.name for p in out.rglob("*.tmp")]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "No space left on device" in manifest["error"]
    assert not (out / ".complete").exists()


def test_a_sink_aborted_on_a_full_disk_removes_its_tmp(full_disk, tmp_path):
    """abort() closed first, and the flush of the buffered rows raised ENOSPC again: the
    unlink after it never ran, and the ``.tmp`` stayed on the full disk."""
    sink = JsonlSink(tmp_path / "sft.jsonl")
    sink.write_bytes(b"{}")
    with pytest.raises(OSError):
        sink.write_bytes(b"x" * 5000)
    sink.abort()
    assert not (tmp_path / "sft.jsonl.tmp").exists()


def test_a_failure_that_cannot_be_recorded_is_logged_and_the_first_error_raised(
    full_disk, tmp_path, monkeypatch, caplog
):
    """Recording the failure failed on the same full disk, and that second error replaced the
    first: the run was reported as failing to write manifest.json."""
    from feinschliff.ingest import stage

    real = stage.write_json

    def write_json(path: Path, data: dict) -> None:
        if data.get("status") == "failed":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path) + ".tmp")
        real(path, data)

    monkeypatch.setattr(stage, "write_json", write_json)
    out = tmp_path / "ing"
    with caplog.at_level(logging.ERROR), pytest.raises(OSError) as raised:
        run_ingest(_spec(), out)
    assert "manifest.json" not in str(raised.value.filename)
    assert f"could not record the failure in {out}" in caplog.text
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    assert not (out / ".complete").exists()


def test_ingest_on_a_full_disk_is_one_line_naming_the_file(
    full_disk, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "ing"
    args = ("ingest", "--source", f"langfuse:{LANGFUSE}", "--pii", "off", "--out", str(out))
    code, said = run_main(monkeypatch, capsys, *args)
    assert code == 1 and "Traceback" not in said, said
    assert f"error: No space left on device: {out}" in said, said


def test_an_unreadable_export_file_is_named(tmp_path, monkeypatch, capsys):
    """README: an unreadable export fails at once, naming the file (a PermissionError from
    the format detection was a traceback). Simulated at ``Path.open``: root reads any file."""
    export = tmp_path / "langfuse"
    export.mkdir()
    for page in LANGFUSE.iterdir():
        (export / page.name).write_bytes(page.read_bytes())
    locked = sorted(export.glob("observations*.json"))[-1]
    real_open = Path.open

    def open_(self, *args, **kwargs):
        if self == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    args = ("--source", f"langfuse:{export}", "--pii", "off", "--out", str(tmp_path / "o"))
    code, said = run_main(monkeypatch, capsys, "ingest", *args)
    assert code == 1 and "Traceback" not in said, said
    assert f"{locked}: Permission denied" in said, said


def test_an_existing_output_folder_on_a_read_only_disk_is_an_argument_error(
    tmp_path, monkeypatch, capsys
):
    """As an output folder the OS cannot create (exit 2): clearing an existing one on a
    read-only disk was a traceback. Simulated at ``Path.unlink`` (a read-only mount needs
    root)."""
    out = tmp_path / "empty"
    out.mkdir()
    real_unlink = Path.unlink

    def unlink(self, missing_ok: bool = False) -> None:
        if out in self.parents:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    args = ("--source", f"langfuse:{LANGFUSE}", "--pii", "off", "--out", str(out))
    code, said = run_main(monkeypatch, capsys, "ingest", *args)
    assert code == 2 and "Traceback" not in said, said
    assert f"cannot write to the output folder {out}: Read-only file system" in said, said


def test_an_unwritable_feinschliff_home_is_refused_up_front(tmp_path, monkeypatch, capsys):
    """It surfaced as a traceback from deep inside ingest (the PII engine's spaCy cache).
    Simulated at ``os.access`` (root may write anywhere but a read-only mount)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(home))
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: Path(p) != home and real_access(p, mode, **kw)
    )
    args = ("--source", f"langfuse:{LANGFUSE}", "--pii", "off", "--out", str(tmp_path / "o"))
    code, said = run_main(monkeypatch, capsys, "ingest", *args)
    assert code == 2 and f"FEINSCHLIFF_HOME={home} is not writable" in said, said
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ run


@pytest.fixture
def flow(tmp_path, monkeypatch):
    """The retrain flow as a stub that raises ``flow.error``."""
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    stub = types.SimpleNamespace(error=None)

    def retrain(**_: object) -> dict:
        raise stub.error

    monkeypatch.setitem(sys.modules, "flows.retrain", types.SimpleNamespace(retrain=retrain))
    stub.args = ["run", DEMO, "--set", f"base_model.name={make_base(tmp_path / 'base')}"]
    return stub


def test_run_names_the_stage_of_an_os_error(flow):
    """README: `run` fails with one line naming the failed stage; a full disk was ~300 lines
    of chained tracebacks naming none."""
    flow.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/w/ingest/sft.jsonl")
    flow.error.feinschliff_stage = "ingest"
    got, output = run_cli(*flow.args)
    assert got == 1 and "ingest: No space left on device: /w/ingest/sft.jsonl" in output


def test_run_says_how_to_go_on_after_ctrl_c(flow, monkeypatch, capsys):
    flow.error = KeyboardInterrupt()
    code, said = run_main(monkeypatch, capsys, *flow.args)
    assert code == 130 and said.strip().endswith("interrupted: rerun the same command to resume")


def test_a_stage_command_says_how_to_go_on_after_ctrl_c(tmp_path, monkeypatch, capsys):
    import feinschliff.ingest.stage as stage

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "run_ingest", interrupted)
    args = ("--source", f"langfuse:{LANGFUSE}", "--out", str(tmp_path / "o"))
    code, said = run_main(monkeypatch, capsys, "ingest", *args)
    assert code == 130 and "interrupted: rerun the same command to resume" in said


def test_a_task_tags_its_os_error_with_its_stage(tmp_path, monkeypatch):
    import flows.tasks as tasks
    from feinschliff.recipe_loader import load_recipe

    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "sft.jsonl"))

    monkeypatch.setattr(tasks, "run_ingest", full)
    with pytest.raises(OSError) as raised:
        tasks.ingest_task.fn(load_recipe(Path(DEMO), []), tmp_path / "ing")
    assert raised.value.feinschliff_stage == "ingest"


class _Failed:
    """A failed task state: ``result()`` raises what the task raised."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    def result(self):
        raise self.exc


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("task", ["ingest_task", "evaluate_task", "register_task"])
def test_a_full_or_read_only_disk_is_not_retried(task, code):
    """Ingest retried a full disk twice as an unexpected error (35 s, then the same error)."""
    import flows.tasks as tasks

    stage = getattr(tasks, task)
    exc = OSError(code, os.strerror(code), "/w/x")
    assert not stage.retry_condition_fn(stage, None, _Failed(exc))
    assert stage.retry_condition_fn(stage, None, _Failed(OSError()))  # unknown: still retried
