"""`train --out` under a read-only parent folder is a wrong output path (exit 2, as README "The
CLI" says of an output path the OS cannot create, and as ingest and generate answer), not a
failed training (exit 1).

The read-only parent is simulated: creating the lock beside the output raises
``OSError(EROFS)`` (tests run as root, where a chmod does not stop writes)."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import pytest

from feinschliff.artifacts import mark_complete
from tests.unit.test_train_review_fixes import DEMO, FAST, WORDS
from tests.unit.tiny_llama import make_tiny_llama


def test_train_out_under_a_read_only_parent_exits_2(tmp_path, monkeypatch, home, capsys):
    import feinschliff.pipeline as pipeline
    from feinschliff.cli import main

    def read_only(folder, name=".run.lock"):
        raise OSError(errno.EROFS, "Read-only file system", str(Path(folder) / name))

    model = make_tiny_llama(tmp_path / "model", WORDS)
    data = tmp_path / "data"
    data.mkdir()
    msgs = [{"role": "user", "content": "Frage"}, {"role": "assistant", "content": "Antwort"}]
    (data / "sft.jsonl").write_text(json.dumps({"messages": msgs}) + "\n")
    mark_complete(data, stage="ingest")
    monkeypatch.setattr(pipeline, "run_lock", read_only)
    out = tmp_path / "ro" / "new"
    sets = [f"--set={s}" for s in [f"base_model.name={model}", *FAST]]
    argv = ["feinschliff", "train", str(DEMO), "--data", str(data), "--out", str(out), *sets]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert str(out) in err and "Read-only file system" in err and "Traceback" not in err
    assert not out.exists()
