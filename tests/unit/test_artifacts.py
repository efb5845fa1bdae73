"""prepare_out: a stage's output dir keeps leftovers of the same inputs (resume) and discards,
loudly, leftovers of other inputs or code."""

from __future__ import annotations

import logging

from feinschliff.artifacts import prepare_out


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
