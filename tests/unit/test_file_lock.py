"""file_lock: a second process waiting for a lock says whom it waits for, instead of hanging
silently behind a holder that may be stuck (a local registry, a pull mirror, a model alias)."""

from __future__ import annotations

import logging
import os
import threading
import time

from feinschliff.artifacts import file_lock


def test_a_wait_names_the_holder_and_goes_on_once_it_is_free(tmp_path, caplog):
    lock = tmp_path / "registry" / "s" / ".lock"
    got = threading.Event()

    def second() -> None:
        with file_lock(lock):  # another open file: flock conflicts within a process too
            got.set()

    with caplog.at_level(logging.WARNING, logger="feinschliff.artifacts"), file_lock(lock):
        waiter = threading.Thread(target=second)
        waiter.start()
        deadline = time.monotonic() + 10
        while "waiting for" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not got.is_set()
    waiter.join(10)
    assert got.is_set()
    assert f"waiting for {lock}, held by pid {os.getpid()} on " in caplog.text


def test_no_message_when_the_lock_is_free(tmp_path, caplog):
    with caplog.at_level(logging.WARNING), file_lock(tmp_path / ".lock"):
        pass
    with caplog.at_level(logging.WARNING), file_lock(tmp_path / ".lock"):
        assert (tmp_path / ".lock").read_text().startswith(f"pid {os.getpid()} ")
    assert "waiting" not in caplog.text
