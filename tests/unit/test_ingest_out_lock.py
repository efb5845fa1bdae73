"""Two ingests into one output folder: the second is refused at once, naming the holder.

Ingest took no lock on its --out (train and generate do): a manual `feinschliff ingest` into a
scheduled run's ingest folder replaced that run's half-written files and .complete under it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_helpers import lock_held_elsewhere, run_main

ROOT = Path(__file__).resolve().parents[2]
LANGFUSE = ROOT / "data" / "samples" / "langfuse"


@pytest.fixture
def holder(tmp_path):
    """Another process holding ``tmp_path/out``'s lock, as a running ingest does."""
    with lock_held_elsewhere(tmp_path, ".out.lock") as proc:
        yield proc


def _ingest(monkeypatch, capsys, out: Path) -> tuple[int, str]:
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(out.parent / "home"))
    source = f"langfuse:{LANGFUSE}"
    return run_main(
        monkeypatch, capsys, "ingest", "--source", source, "--pii", "off", "--out", str(out)
    )


def test_a_second_ingest_into_a_held_output_is_refused_and_touches_nothing(
    tmp_path, holder, monkeypatch, capsys
):
    out = tmp_path / "out"
    out.mkdir()  # as a running ingest leaves it (its manifest first, then its rows)
    (out / "manifest.json").write_text('{"stage": "ingest", "status": "running"}')
    (out / "sft.jsonl.tmp").write_text("the running ingest's rows so far\n")
    code, said = _ingest(monkeypatch, capsys, out)
    assert code == 2, said
    assert f"is being written by another run (pid {holder.pid} on " in said, said
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "sft.jsonl.tmp"]
    assert (out / "sft.jsonl.tmp").read_text() == "the running ingest's rows so far\n"


def test_the_lock_is_released_after_an_ingest(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert _ingest(monkeypatch, capsys, out)[0] == 0
    assert (out / ".complete").is_file()
    assert _ingest(monkeypatch, capsys, out)[0] == 0  # not refused by its own earlier lock
