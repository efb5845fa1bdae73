"""A full disk during ``generate`` ends the run with its cause and path, never a hang.

A full disk is simulated: a write is monkeypatched to raise OSError(ENOSPC) and free space is
faked through ``os.statvfs``, because CI may run unprivileged and cannot mount a small tmpfs.
The real case (tmpfs under ``--out``) hung: distilabel logged "Failed with an unhandled
exception", the ledger's own write failed so it never said ``failed``, and the stage waited
forever.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from feinschliff.generate import ledger as ledger_mod
from feinschliff.generate import stage, watch
from feinschliff.generate.ledger import Ledger
from feinschliff.generate.teacher import TeacherLLM

ENOSPC = os.strerror(errno.ENOSPC)

# distilabel's line after a step process raised outside its batch handling (as rich wraps it
# in a log file); then it waits forever
HUNG_CHILD = (
    "import time; print(\"ERROR    ['distilabel.pipeline'] ❌ Failed with local.py:311\\n"
    '                             an unhandled exception: list indices", flush=True); '
    "time.sleep(600)"
)


@pytest.mark.timeout(60)
def test_a_child_whose_pipeline_failed_and_idles_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(watch, "FAILED_QUIET_S", 1.0)
    ledger = Ledger(tmp_path / "ledger.json", None, None)
    ledger.reset()  # the ledger never says `failed`: its own write failed on the full disk
    log_path = tmp_path / "generate.log"
    started = time.monotonic()
    with log_path.open("wb") as log_file:
        code, state = watch._watch_child(
            [sys.executable, "-c", HUNG_CHILD], log_file, log_path, ledger
        )
    assert time.monotonic() - started < 30, "the stage waited for a failed pipeline"
    assert code != 0
    assert state is None  # no teacher failure: the stage reports the exit and the log


def _full_disk(path, text):
    raise OSError(errno.ENOSPC, ENOSPC, str(path))


def test_a_full_request_cache_is_an_oserror_naming_it_not_a_teacher_failure(tmp_path, monkeypatch):
    cache = tmp_path / "requests.jsonl"
    llm = TeacherLLM(
        model="teacher",
        base_url="http://teacher.invalid/v1",
        cache_path=str(cache),
        ledger_path=str(tmp_path / "ledger.json"),
        backoff_s=0.0,
    )
    llm.load()
    Ledger(Path(llm.ledger_path), None, None).reset()
    reply = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Ja."}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    reply["choices"][0]["finish_reason"] = "stop"
    llm._client = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json=reply))
    )
    monkeypatch.setattr(ledger_mod, "append_line", _full_disk)  # the cache's disk is full
    msgs = [{"role": "user", "content": "Frage?"}]
    asyncio.run(llm.agenerate(msgs, num_generations=1, max_new_tokens=8, seed=1))
    state = json.loads(Path(llm.ledger_path).read_text())
    error = stage._teacher_failure(state, str(cache))
    assert isinstance(error, OSError), error
    assert error.errno == errno.ENOSPC and error.filename == str(cache)
    assert "request cache" in error.strerror and ENOSPC in error.strerror
    assert "every completed reply is kept" not in str(error)


def test_a_full_output_disk_is_enospc_naming_the_path_not_a_log_tail(tmp_path, monkeypatch):
    real = os.statvfs

    def statvfs(path):
        st = real(path)
        full = Path(path) == tmp_path / "out"
        return os.statvfs_result((*st[:4], 0 if full else st.f_bavail, *st[5:]))

    (tmp_path / "out").mkdir()
    monkeypatch.setattr(os, "statvfs", statvfs)
    tail = "ERROR Failed with an unhandled exception: list indices must be integers\n" * 40
    full = watch.disk_full(tail, [tmp_path / "cache.jsonl", tmp_path / "out"])
    assert isinstance(full, OSError) and full.errno == errno.ENOSPC
    assert full.filename == str(tmp_path / "out")
    # a log that says so names the output when no disk is (any longer) near full
    said = watch.disk_full(f"OSError: [Errno 28] {ENOSPC}", [tmp_path / "cache.jsonl"])
    assert said is not None and said.filename == str(tmp_path / "cache.jsonl")
    assert watch.disk_full(tail, [tmp_path / "cache.jsonl"]) is None
