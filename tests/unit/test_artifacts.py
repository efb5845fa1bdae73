"""prepare_out: a stage's output dir keeps leftovers of the same inputs (resume) and discards,
loudly, leftovers of other inputs or code."""

from __future__ import annotations

import logging

import pytest

from feinschliff.artifacts import OutputInUse, prepare_out


def test_same_inputs_keep_leftovers(tmp_path):
    out = tmp_path / "train"
    prepare_out(out, "key-a")
    (out / "checkpoint-2").mkdir()
    prepare_out(out, "key-a")
    assert (out / "checkpoint-2").is_dir()


def test_other_inputs_discard_leftovers_with_a_warning(tmp_path, caplog):
    out = tmp_path / "train"
    prepare_out(out, "key-a")
    (out / "checkpoint-2").mkdir()
    with caplog.at_level(logging.WARNING, logger="feinschliff.artifacts"):
        prepare_out(out, "key-b")
    assert not (out / "checkpoint-2").exists()
    assert (out / ".inputs").read_text().strip() == "key-b"
    assert "discarding leftovers" in caplog.text


def test_a_folder_no_stage_wrote_is_refused_not_wiped(tmp_path):
    """`--out` (or `--mixed-out`) pointed at someone's data or at an ingest output: the stage
    stops before deleting anything."""
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(OutputInUse, match="nothing was deleted"):
        prepare_out(out, "key-a")
    assert (out / "notes.txt").read_text() == "keep me"
    assert not (out / ".inputs").exists()


def test_an_empty_folder_is_taken(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    prepare_out(out, "key-a")
    assert (out / ".inputs").read_text().strip() == "key-a"


def test_cli_refuses_mixing_into_the_feedback_folder(tmp_path):
    """`generate --mixed-out` equal to `--feedback` used to wipe the ingest output (heldout/
    included) and then write a mix with 0 feedback rows."""
    from feinschliff.artifacts import DatasetRef, mark_complete
    from feinschliff.generate.mix import merge_datasets
    from feinschliff.specs.generate import MixSpec

    fb = tmp_path / "ingest"
    (fb / "heldout").mkdir(parents=True)
    (fb / "sft.jsonl").write_text('{"messages": []}\n')
    ref = DatasetRef(path=str(fb), sha256=mark_complete(fb))
    with pytest.raises(OutputInUse):
        merge_datasets(ref, ref, MixSpec(), fb)
    assert (fb / "sft.jsonl").exists() and (fb / "heldout").is_dir()


def test_an_output_path_that_is_a_file_is_refused_not_a_traceback(tmp_path):
    (tmp_path / "out").write_text("my notes")
    with pytest.raises(OutputInUse, match="is a file"):
        prepare_out(tmp_path / "out", "k")
    assert (tmp_path / "out").read_text() == "my notes"


def test_file_lock_excludes_other_processes_until_the_holder_dies(tmp_path):
    """One flock helper serves the registry, both ledgers and model fetches: a second process
    waits while the lock is held and gets it once the holder is killed (no stale lock)."""
    import subprocess
    import sys
    import time

    from feinschliff.artifacts import file_lock

    lock = tmp_path / "sub" / "x.lock"  # the folder is created
    take = (
        "import sys, time; from pathlib import Path; from feinschliff.artifacts import file_lock\n"
        "with file_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", take, str(lock)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        probe = (
            "import fcntl, sys\nf = open(sys.argv[1], 'a')\n"
            "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n"
            "    sys.exit(3)"
        )
        assert subprocess.run([sys.executable, "-c", probe, str(lock)]).returncode == 3
    finally:
        holder.kill()
        holder.wait()
    start = time.monotonic()
    with file_lock(lock):
        assert time.monotonic() - start < 5


def test_write_json_writes_utf8_whatever_the_locale(tmp_path):
    """A C/POSIX locale without UTF-8 (some minimal container images) made the approver
    "Jürgen" in decision.json an UnicodeEncodeError: JSON files are UTF-8 by definition."""
    import json
    import os
    import subprocess
    import sys

    path = tmp_path / "d.json"
    code = (  # the name as an escape: argv itself is decoded with the locale
        "from pathlib import Path; from feinschliff.artifacts import write_json; "
        f"write_json(Path({str(path)!r}), {{'by': 'J\\u00fcrgen'}})"
    )
    env = {**os.environ, "PYTHONCOERCECLOCALE": "0", "LC_ALL": "C", "LANG": "C"}
    env.pop("PYTHONUTF8", None)
    subprocess.run([sys.executable, "-X", "utf8=0", "-c", code], env=env, check=True)
    assert json.loads(path.read_bytes().decode("utf-8")) == {"by": "Jürgen"}
