"""Live pulls mirror raw, unscrubbed feedback (customer PII) under FEINSCHLIFF_HOME/ingest:
with the usual umask 022 every user on the host could read it (0755 folders, 0644 pages). The
folder is now the owner's only, also when an older version created it open."""

from __future__ import annotations

import os
import stat

from feinschliff.ingest.pull import state_dir


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_pull_state_folder_is_owner_only_whatever_the_umask(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    old = os.umask(0o022)
    try:
        folder = state_dir()
        (folder / "mirror" / "k").mkdir(parents=True)
        (folder / "mirror" / "k" / "observations-page-1.json").write_text("{}")
    finally:
        os.umask(old)
    assert _mode(folder) == 0o700
    assert _mode(folder.parent) != 0o700  # the rest of the home is left as it was


def test_a_folder_left_open_by_an_older_version_is_closed(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "ingest").mkdir(parents=True, mode=0o755)
    (tmp_path / "home" / "ingest").chmod(0o755)
    assert _mode(state_dir()) == 0o700
