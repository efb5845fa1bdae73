"""The registry's lock on an object store: a lock object made by exclusive create, with a lease.

``fs.open(path, "xb")`` creates the object only if it does not exist: ``O_EXCL`` for local
paths, ``If-None-Match: *`` on S3 through s3fs (a 412 becomes FileExistsError). fsspec's
``memory://`` checks and then creates, so creates within this process are also serialised by a
mutex; across processes the store's own atomicity is what counts.

The object holds the owner, a random token and the lease expiry (wall clock). The holder renews
the lease every ``lease_s / 3`` seconds from a heartbeat thread, so a live holder keeps its lock
for as long as it needs; a lock whose lease has expired belongs to a killed holder and is broken
by the next writer: one breaker at a time (its own exclusive ``.break`` object), and only if it
is still the same expired lock. A holder whose lease was broken anyway (it stalled for longer
than the lease) notices on its next beat; :meth:`Lease.check` then raises before it writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from feinschliff.registry_store import Lease, LockTimeout, who

if TYPE_CHECKING:
    from feinschliff.registry_store import FsspecStore

log = logging.getLogger(__name__)
_CREATE_MUTEX = threading.Lock()


@contextmanager
def object_lock(store: FsspecStore, rel: str, *, lease_s: float) -> Iterator[Lease]:
    """Hold the lock object ``rel`` of ``store`` (wait up to ``store.wait_s`` for it)."""
    fs, path = store.fs, store._p(rel)
    token = uuid.uuid4().hex
    deadline = time.monotonic() + store.wait_s
    delay = 0.02
    while True:
        created = time.monotonic()  # before the body's expiry is stamped: errs on the safe side
        if _create(fs, path, _body(token, lease_s)):
            break
        holder = _read(fs, path)
        if holder is not None and holder.get("expires", 0) < time.time():
            _break_stale(fs, path, holder)
            continue
        if time.monotonic() > deadline:
            raise LockTimeout(
                f"{store.url}/{rel} is held by {(holder or {}).get('owner', '?')} "
                f"(waited {store.wait_s:.0f} s)"
            )
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 1.0)
    lease = _Heartbeat(fs, path, token, lease_s, renewed=created)
    lease.start()
    try:
        yield lease
    finally:
        lease.stop()
        if (_read(fs, path) or {}).get("token") == token:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(path)


def _body(token: str, lease_s: float) -> bytes:
    owner = f"{who()}@{socket.gethostname()}:{os.getpid()}"
    return json.dumps({"token": token, "owner": owner, "expires": time.time() + lease_s}).encode()


def _create(fs: Any, path: str, body: bytes) -> bool:
    """Exclusive create: True if we made the object, False if it already existed."""
    with _CREATE_MUTEX:
        try:
            with fs.open(path, "xb") as f:
                f.write(body)
            return True
        except FileExistsError:
            return False


def _read(fs: Any, path: str) -> dict[str, Any] | None:
    try:
        return json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return None  # released meanwhile (or half-written by a dying create)


def _break_stale(fs: Any, path: str, seen: dict[str, Any]) -> None:
    """Remove an expired lock, one breaker at a time, only if it is still the one we saw."""
    breaker = path + ".break"
    if not _create(fs, breaker, _body(uuid.uuid4().hex, 10.0)):
        held = _read(fs, breaker)
        if held is None or held.get("expires", 0) < time.time():
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(breaker)  # a breaker that died while breaking
        return
    try:
        again = _read(fs, path)
        if again is not None and again.get("token") == seen.get("token"):
            log.warning(
                "breaking the stale registry lock %s of %s (lease expired %.0f s ago)",
                path,
                seen.get("owner"),
                time.time() - seen.get("expires", 0),
            )
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(breaker)


class _Heartbeat(Lease):
    """Renews the lease every ``lease_s / 3`` seconds while the lock is held.

    A beat that fails (any store error: botocore's are no OSError) is retried on the next one;
    once no renewal has succeeded for ``lease_s`` the lease may have run out and another writer
    may hold the lock, so it counts as lost (:meth:`check` raises), also when the heartbeat
    thread itself stalled or died.
    """

    def __init__(self, fs: Any, path: str, token: str, lease_s: float, *, renewed: float):
        self.fs, self.path, self.token, self.lease_s = fs, path, token, lease_s
        self._renewed = renewed  # monotonic time before the current lease was stamped
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="registry-lease")

    @property
    def lost(self) -> bool:  # type: ignore[override]
        return self._lost or time.monotonic() - self._renewed >= self.lease_s

    @lost.setter
    def lost(self, value: bool) -> None:
        self._lost = value

    _lost = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                held = self.fs.cat_file(self.path)
                if json.loads(held).get("token") != self.token:
                    raise FileNotFoundError(self.path)
            except (FileNotFoundError, ValueError):
                self.lost = True
                log.error("lost the registry lock %s (lease expired)", self.path)
                return
            except Exception as exc:  # a transient store error: the next beat tries again
                log.warning("could not read the lease on %s: %s", self.path, exc)
                continue
            stamped = time.monotonic()
            if self.lost:
                # The lease ran out before this beat (a stall): a breaker may have taken the lock
                # since it was read above, and renewing would overwrite the new holder's lock.
                log.error("lost the registry lock %s (no renewal for the whole lease)", self.path)
                return
            try:
                self.fs.pipe_file(self.path, _body(self.token, self.lease_s))
            except Exception as exc:  # a transient store error: the next beat tries again
                log.warning("could not renew the lease on %s: %s", self.path, exc)
                continue
            self._renewed = stamped
