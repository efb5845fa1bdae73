"""The object-store lock's heartbeat never revives a lease that already ran out."""

from __future__ import annotations

import json
import time

from feinschliff.registry_lock import _body, _Heartbeat


class _Store:
    """An fsspec-like object: reads return the holder's own lock, writes are recorded."""

    def __init__(self, body: bytes):
        self.body, self.writes = body, []

    def cat_file(self, path: str) -> bytes:
        return self.body

    def pipe_file(self, path: str, data: bytes) -> None:
        self.writes.append(data)


def _beat_once(beat: _Heartbeat, lease_s: float) -> None:
    beat.lease_s = lease_s  # the first beat comes after a third of it
    beat.start()
    time.sleep(lease_s / 3 + 0.3)
    beat.stop()


def test_a_stalled_holder_does_not_overwrite_a_lock_broken_while_it_stalled():
    """The holder read its own token, but its last renewal is older than the lease: a breaker
    may have re-created the lock in between, so the beat must not write (it did, and reset the
    lease as if nothing had happened)."""
    token = "t" * 32
    store = _Store(_body(token, 60.0))
    stale = _Heartbeat(store, "reg/s/.lock", token, 60.0, renewed=time.monotonic() - 120.0)
    _beat_once(stale, 0.03)
    assert store.writes == []
    assert stale.lost


def test_a_live_holder_renews():
    token = "t" * 32
    store = _Store(_body(token, 60.0))
    live = _Heartbeat(store, "reg/s/.lock", token, 60.0, renewed=time.monotonic())
    _beat_once(live, 3.0)  # a generous lease: a loaded machine may delay the beat
    assert store.writes and json.loads(store.writes[-1])["token"] == token
    assert not live.lost
