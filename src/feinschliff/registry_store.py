"""Where the adapter registry keeps its files: a local directory or any fsspec URL.

Both stores take POSIX paths relative to the registry root and offer the same few operations
the registry needs (read/write whole files, list, append, lock, write an immutable version).

:class:`LocalStore` (a directory or ``file://``): a version is built in a hidden temp directory
and ``os.rename``-d into place (atomic on one filesystem); locks are ``fcntl.flock``, which the
kernel drops when the holder dies, so a killed writer never leaves a stale lock. Every write is
durable before it becomes visible (files and folders fsynced before the rename that publishes
them, the folder after it): a power cut leaves the old state or the new one.

:class:`FsspecStore` (``s3://``, ``gs://``, ``memory://``, ...): no atomic rename, no file locks, so

- a version is uploaded under a temp prefix ``.vNNNN-<token>/``, copied file by file to
  ``vNNNN/`` and its ``.complete`` marker is written last; readers ignore a version without the
  marker, so a writer killed half-way leaves nothing visible (and the next writer removes it);
- a lock is a small object made by exclusive create, with a lease renewed by a heartbeat and
  broken once it expires (its holder was killed): see :mod:`feinschliff.registry_lock`;
- an append (the audit log) rewrites the whole object; it only ever happens under the lock.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import logging
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from feinschliff.artifacts import COMPLETE, append_line, completed_hash, file_lock
from feinschliff.models import feinschliff_home

log = logging.getLogger(__name__)
_REFUSED = (errno.EROFS, errno.EACCES, errno.EPERM)  # a read-only mount, no permission


class RegistryError(RuntimeError):
    """Invalid name, missing version, or a refused change."""


class InvalidName(RegistryError):
    """A use case or version name that is not safe as a path component."""


class NotAFolder(InvalidName):
    """A local registry that is a file, lies under one or is read-only (a wrong path, exit 2)."""


class AliasConflict(RegistryError):
    """The alias moved since the caller read it (a lost compare-and-swap)."""


class LockTimeout(RegistryError):
    """Another writer held the registry lock for longer than we were willing to wait."""


class LockLost(RegistryError):
    """Our lease on a store lock expired and someone else took the lock: nothing was written."""


def who() -> str:
    try:
        return os.environ.get("FEINSCHLIFF_USER") or getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


class Lease:
    """What a lock context yields; :meth:`check` raises if the lock was lost meanwhile."""

    lost = False

    def check(self) -> None:
        if self.lost:
            raise LockLost("the registry lock's lease expired and another writer took it")


class LocalStore:
    """A registry in a local directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.url = str(self.root)

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            return (self.root / rel).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write_bytes(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a power cut leaves old or new
        tmp.replace(path)  # readers see the old or the new file, never half of one
        fsync_dir(path.parent)  # the rename itself is an entry of the folder

    def append_line(self, rel: str, line: str) -> None:
        path = self.root / rel
        new = not path.exists()
        append_line(path, line)  # fsyncs the file
        if new:  # a new file is also a new entry of its folder
            fsync_dir(path.parent)

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def isdir(self, rel: str) -> bool:
        return (self.root / rel).is_dir()

    def listdir(self, rel: str) -> list[str]:
        path = self.root / rel
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []

    def remove_tree(self, rel: str) -> None:
        shutil.rmtree(self.root / rel, ignore_errors=True)

    @contextmanager
    def lock(self, rel: str, *, lease_s: float | None = None) -> Iterator[Lease]:
        """An exclusive flock on ``rel``; the kernel drops it if the holder is killed."""
        try:
            with file_lock(self.root / rel):
                yield Lease()
        except OSError as exc:  # every change holds it: a read-only mount is a wrong path
            if exc.errno in _REFUSED and Path(exc.filename or "/").is_relative_to(self.root):
                raise NotAFolder(f"registry {self.root}: {exc.strerror}: {exc.filename}") from None
            raise

    def write_version(
        self,
        uc_rel: str,
        version: str,
        fill: Callable[[Path], None],
        commit: Callable[[], None] = lambda: None,
    ) -> None:
        """``fill`` a hidden temp dir next to the version, fsync it (marker last), rename it
        into place and fsync the folders holding it: once this returns, the version survives a
        power cut. ``commit`` runs just before it becomes visible (and may raise to stop it)."""
        uc = self.root / uc_rel
        uc.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=uc))
        try:
            fill(tmp)
            fsync_tree(tmp)
            commit()
            os.rename(tmp, uc / version)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(uc)
        fsync_dir(uc.parent)  # a use case registered for the first time is new there too

    def local_dir(self, rel: str) -> Path | None:
        return self.root / rel

    def download(self, rel: str, dest: Path) -> None:
        shutil.copytree(self.root / rel, dest, symlinks=False, dirs_exist_ok=True)


def fsync_dir(path: Path) -> None:
    """Make the entries of a folder (files created, renamed into it) survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file below ``root``, then every folder, deepest first. A ``.complete``
    marker goes last in its folder: it vouches for everything else being on disk."""
    for here, _, names in os.walk(root, topdown=False):
        for name in sorted(names, key=lambda n: n == COMPLETE):
            with open(os.path.join(here, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(here))


class FsspecStore:
    """A registry on any fsspec URL. ``lease_s``: how long a lock survives a dead holder;
    ``wait_s``: how long to wait for a busy lock before :class:`LockTimeout`."""

    def __init__(
        self, url: str, *, lease_s: float = 30.0, wait_s: float = 600.0, **storage_options: Any
    ):
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self.path = fsspec.core.url_to_fs(self.url, **storage_options)
        self.lease_s = lease_s
        self.wait_s = wait_s

    def __repr__(self) -> str:
        return f"FsspecStore({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FsspecStore) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def _p(self, rel: str) -> str:
        return posixpath.join(self.path, rel) if rel else self.path

    def _fresh(self) -> None:
        # s3fs caches listings; another writer may have changed the store since
        self.fs.invalidate_cache()

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            return self.fs.cat_file(self._p(rel))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.fs.pipe_file(self._p(rel), data)

    def append_line(self, rel: str, line: str) -> None:
        """Read-modify-write: object stores cannot append. Callers hold the store lock."""
        old = self.read_bytes(rel) or b""
        self.write_bytes(rel, old + (line + "\n").encode("utf-8"))

    def exists(self, rel: str) -> bool:
        self._fresh()
        return self.fs.exists(self._p(rel))

    def isdir(self, rel: str) -> bool:
        self._fresh()
        return self.fs.isdir(self._p(rel))

    def listdir(self, rel: str) -> list[str]:
        self._fresh()
        try:
            entries = self.fs.ls(self._p(rel), detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        base = self._p(rel).strip("/")
        names = {posixpath.basename(e.rstrip("/")) for e in entries if e.strip("/") != base}
        return sorted(n for n in names if n)

    def remove_tree(self, rel: str) -> None:
        self._fresh()
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._p(rel), recursive=True)

    def files(self, rel: str) -> list[str]:
        """Every file below ``rel``, as paths relative to it."""
        self._fresh()
        base = self._p(rel).rstrip("/")
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        strip = self.fs._strip_protocol(base).rstrip("/") + "/"
        return sorted(f[len(strip) :] for f in found if f.startswith(strip))

    def write_version(
        self,
        uc_rel: str,
        version: str,
        fill: Callable[[Path], None],
        commit: Callable[[], None] = lambda: None,
    ) -> None:
        """Build locally, upload under a temp prefix, copy to ``version/``, marker last.
        ``commit`` runs just before the marker is written (and may raise to stop it): an upload
        can outlast the lock's lease."""
        tmp_rel = f"{uc_rel}/.{version}-{uuid.uuid4().hex[:12]}"
        final_rel = f"{uc_rel}/{version}"
        with tempfile.TemporaryDirectory(prefix="feinschliff-upload-") as work:
            build = Path(work) / version
            build.mkdir()
            fill(build)
            rels = sorted(
                p.relative_to(build).as_posix()
                for p in build.rglob("*")
                if p.is_file() and p.relative_to(build).as_posix() != COMPLETE
            )
            try:
                for rel in rels:
                    self.write_bytes(f"{tmp_rel}/{rel}", (build / rel).read_bytes())
                for rel in rels:
                    self.fs.copy(self._p(f"{tmp_rel}/{rel}"), self._p(f"{final_rel}/{rel}"))
                commit()
                self.write_bytes(f"{final_rel}/{COMPLETE}", (build / COMPLETE).read_bytes())
            except BaseException:
                if not self.exists(f"{final_rel}/{COMPLETE}"):
                    self.remove_tree(final_rel)
                raise
            finally:
                self.remove_tree(tmp_rel)

    def local_dir(self, rel: str) -> Path | None:
        return None

    def download(self, rel: str, dest: Path) -> None:
        files = self.files(rel)  # keys are named by whoever can write the bucket: ../ is refused
        if bad := [f for f in files if ".." in f.split("/") or f.startswith("/")]:
            raise RegistryError(f"{self.url}/{rel}: refusing the key {bad[0]!r}: outside {dest}")
        for f in files:
            target = dest / f
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.fs.cat_file(self._p(f"{rel}/{f}")))

    def lock(self, rel: str, *, lease_s: float | None = None) -> AbstractContextManager[Lease]:
        """Hold the lock object ``rel``: exclusive create + a lease renewed by a heartbeat."""
        from feinschliff.registry_lock import object_lock

        return object_lock(self, rel, lease_s=lease_s or self.lease_s)


# ------------------------------------------------------------------ roots

Root = Path | FsspecStore


def default_root() -> Path:
    return feinschliff_home() / "registry"


def open_root(location: str | Path | None, **storage_options: Any) -> Root:
    """A registry location as a root: a local Path (path, ``file://`` URL, None for the
    default) or an :class:`FsspecStore` for any other fsspec URL (``s3://bucket/registry``).
    ``storage_options`` go to fsspec (credentials and endpoints usually come from the
    environment, e.g. ``AWS_ENDPOINT_URL`` / ``AWS_PROFILE``)."""
    if location is None:
        return default_root()
    if isinstance(location, FsspecStore | Path):
        return location
    text = str(location)
    if "://" not in text:
        return _folder(Path(text).expanduser())
    url = urlparse(text)
    if url.scheme == "file":
        return _folder(Path(url.path))
    try:
        return FsspecStore(text, **storage_options)
    except (ImportError, ValueError) as exc:
        raise RegistryError(
            f"registry {text}: cannot open {url.scheme}:// ({exc}); install the fsspec "
            f"backend for it (e.g. s3fs for s3://, gcsfs for gs://)"
        ) from exc


def _folder(path: Path) -> Path:
    """A local registry must be (or become) a folder: a file there, or above it, is refused
    here with one line instead of an OS error at the first lock or write."""
    for at in (path, *path.parents):
        if at.exists():
            if not at.is_dir():
                where = "is a file" if at == path else f"lies under the file {at}"
                raise NotAFolder(f"registry {path} {where}, not a folder")
            return path
    return path


def store_of(root: Root | str | LocalStore) -> LocalStore | FsspecStore:
    """The store behind a root, path or URL."""
    if isinstance(root, FsspecStore | LocalStore):
        return root
    opened = open_root(root)
    return opened if isinstance(opened, FsspecStore) else LocalStore(opened)


def location(root: Root) -> str:
    """The root as text (a path or a URL) for messages and manifests."""
    return root.url if isinstance(root, FsspecStore) else str(root)


def materialise(st: LocalStore | FsspecStore, rel: str, dest: Path, sha256: str | None) -> None:
    """Download the tree ``rel`` to ``dest`` (via a temp dir), checked against its marker hash.
    Safe against a concurrent materialisation: whoever renames second keeps the first copy."""
    tmp = dest.with_name(f".{dest.name}-{uuid.uuid4().hex[:8]}")
    try:
        st.download(rel, tmp)
        if completed_hash(tmp) != sha256:
            raise RegistryError(f"{st.url}/{rel} does not match its .complete marker (corrupt?)")
        if dest.exists() and completed_hash(dest) != sha256:  # a stale or damaged copy
            old = dest.with_name(f".{dest.name}-old-{uuid.uuid4().hex[:8]}")
            os.rename(dest, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(dest)
        except OSError:
            if completed_hash(dest) != sha256:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
