"""Serving copies after a killed copy and beside a concurrent one: temp dirs of dead writers are
swept from the serving folder, live ones are not, and a folder another writer completed meanwhile
is not swapped out under a replica. No vLLM is involved (staging only writes files)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from feinschliff.artifacts import completed_hash
from feinschliff.serving import staging
from feinschliff.serving.staging import copy_complete

REPO = Path(__file__).resolve().parents[2]
LEAF = "v0001-0123456789ab"


def _adapter(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"r": 8}\n')
    (path / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
    return path


def _backdate(path: Path, seconds: float) -> None:
    when = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (when, when))


def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(proc.stdout)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_copy_killed_midway_leaves_nothing_behind_after_the_next_copy(tmp_path):
    """SIGKILL (or SIGTERM: no ``finally`` runs) during the copy leaves its temp dir; the next
    copy into the serving folder removes it once its writer is gone."""
    src = _adapter(tmp_path / "src")
    serving = tmp_path / "serving" / "uc"
    kill = (
        "import os, shutil, signal, sys\n"
        "from pathlib import Path\n"
        "from feinschliff.serving import staging\n"
        "real = shutil.copytree\n"
        "def copy_then_die(*a, **kw):\n"
        "    real(*a, **kw)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "staging.shutil.copytree = copy_then_die\n"
        "staging.copy_complete(Path(sys.argv[1]), Path(sys.argv[2]), 'v0001', 'ab')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", kill, str(src), str(serving / LEAF)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert proc.returncode == -signal.SIGKILL
    left = _hidden(serving)
    assert len(left) == 1 and not (serving / LEAF).exists()
    _backdate(serving / left[0], 600)  # its writer is gone, and for longer than SETTLE_S

    copy_complete(src, serving / "v0002-ba9876543210", "v0002", "cd")

    assert _hidden(serving) == []
    assert completed_hash(serving / "v0002-ba9876543210") is not None


def test_only_temp_dirs_of_gone_writers_are_swept(tmp_path):
    """A live writer's temp dir stays (this process; another machine's within STALE_S; a dead
    pid's for SETTLE_S, which may be a live process in another PID namespace); other hidden
    folders on the volume are never touched."""
    host, me, dead = staging._host_id(), os.getpid(), _dead_pid()
    other = "f" * 12 if host != "f" * 12 else "e" * 12
    names = {
        f".{LEAF}~tmp~{host}~{me}~abc": (10**6, False),  # this process: alive
        f".{LEAF}~tmp~{host}~{dead}~abc": (staging.SETTLE_S + 60, True),
        f".{LEAF}~old~{host}~{dead}~def": (staging.SETTLE_S + 60, True),
        f".{LEAF}~tmp~{host}~{dead}~ghi": (5, False),  # just died: let it settle
        f".{LEAF}~tmp~{other}~{dead}~abc": (60, False),  # another machine, recently written
        f".{LEAF}~tmp~{other}~{dead}~def": (staging.STALE_S + 60, True),
        f".{LEAF}-k2j4_x9q": (staging.STALE_S + 60, True),  # an older feinschliff's
        f".{LEAF}-old-{dead}": (staging.STALE_S + 60, True),
        ".snapshot": (staging.STALE_S + 60, False),  # not ours
        ".cache-abcdefgh": (staging.STALE_S + 60, False),
    }
    for name, (age, _) in names.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_model.safetensors").write_bytes(b"x")
        _backdate(tmp_path / name, age)
    (tmp_path / LEAF).mkdir()

    removed = staging.sweep_leftovers(tmp_path)

    assert sorted(p.name for p in removed) == sorted(n for n, (_, gone) in names.items() if gone)
    assert _hidden(tmp_path) == sorted(n for n, (_, gone) in names.items() if not gone)
    assert (tmp_path / LEAF).is_dir()


def test_a_folder_another_writer_completed_meanwhile_is_not_swapped_out(tmp_path, monkeypatch):
    """`serve-config` copies without the serve lock: when a promotion completes the same
    version's folder while this copy runs, that folder (which a replica may be loading from
    right now) stays in place; swapping it for an identical copy left the path missing for a
    moment and a load then answered 404."""
    src = _adapter(tmp_path / "src")
    dest = tmp_path / "serving" / "uc" / LEAF
    real = staging.shutil.copytree
    seen: dict[str, int] = {}

    def racing_copy(a, b, **kw):
        if not seen:
            seen["inode"] = 0
            copy_complete(src, dest, "v0001", "ab")  # the other writer wins the race
            seen["inode"] = dest.stat().st_ino
        return real(a, b, **kw)

    monkeypatch.setattr(staging.shutil, "copytree", racing_copy)
    copy_complete(src, dest, "v0001", "ab")

    assert dest.stat().st_ino == seen["inode"]
    assert completed_hash(dest) is not None
    assert _hidden(dest.parent) == []
