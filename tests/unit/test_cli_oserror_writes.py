"""Full-disk failures of evaluate, gate and register: one line naming the file, no .tmp left;
a report of an evaluate that did not finish is refused.

A full disk is simulated at a boundary (``Path.write_text`` / ``Path.replace`` raising
ENOSPC, ``shutil.Error`` as copytree raises it): CI may not mount a small tmpfs.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from feinschliff.artifacts import write_json
from feinschliff.cli.app import os_error_line
from tests.cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")


def test_a_json_file_on_a_full_disk_is_named_and_leaves_no_tmp(tmp_path, monkeypatch):
    """decision.json.tmp (gate) and the like stayed behind, and the error named no file."""
    real = Path.replace

    def full(self, target):
        if str(self).endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, target)

    monkeypatch.setattr(Path, "replace", full)
    with pytest.raises(OSError) as err:
        write_json(tmp_path / "decision.json", {"promote": False})
    assert os_error_line(err.value) == f"No space left on device: {tmp_path / 'decision.json'}"
    assert list(tmp_path.iterdir()) == []


def test_a_copy_that_failed_on_a_full_disk_is_one_line():
    """register's copytree raised shutil.Error, printed as a Python list of tuples."""
    why = "[Errno 28] No space left on device: '/reg/s/.v0002-x/adapter/a.safetensors'"
    exc = shutil.Error(
        [
            ("/t/adapter/a.safetensors", "/reg/s/.v0002-x/adapter/a.safetensors", why),
            ("/t/adapter/c.json", "/reg/s/.v0002-x/adapter/c.json", why),
        ]
    )
    assert os_error_line(exc) == (
        "No space left on device: /reg/s/.v0002-x/adapter/a.safetensors (and 1 more files)"
    )


def test_a_report_of_an_evaluate_that_did_not_finish_is_refused(tmp_path):
    """An evaluate that failed (e.g. on a full disk writing report.md) left report.json without
    .complete; gate decided on it as if it were finished."""
    out = tmp_path / "eval"
    out.mkdir()
    (out / ".inputs").write_text("key")
    (out / "report.json").write_text(json.dumps({"use_case": "x", "metrics": {"base": {}}}))
    code, said = run_cli("gate", DEMO, "--report", str(out / "report.json"))
    assert code == 2, said
    assert "the evaluate that wrote it did not finish" in said and "rerun evaluate" in said, said
