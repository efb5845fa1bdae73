"""The leftover sweep measures a copy's own activity, not the age of what it copies.

``shutil.copytree`` keeps the source's mtimes (files via copy2, folders via copystat), so a copy
of a registry version older than ``STALE_S`` looked idle for hours the moment it was written,
and a writer on another host sharing the serving volume swept it while it was still copying
(a routine rollback to last week's version). No vLLM is involved (staging only writes files).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from feinschliff.serving import staging
from feinschliff.serving.staging import STALE_S, copy_complete


def _old_adapter(path: Path) -> Path:
    """An adapter folder whose files and folders were last changed a day ago."""
    (path / "sub").mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"r": 8}\n')
    (path / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
    (path / "sub" / "notes.txt").write_text("x")
    when = time.time() - 24 * 3600
    for p in [*path.rglob("*"), path]:
        os.utime(p, (when, when))
    return path


def test_a_running_copy_of_an_old_version_is_not_swept_by_another_host(tmp_path, monkeypatch):
    src = _old_adapter(tmp_path / "registry" / "v0001" / "adapter")
    serving = tmp_path / "serving" / "uc"
    seen: dict[str, object] = {}
    real_mark = staging.mark_complete

    def mark_while_another_host_sweeps(tmp: Path, **kw):
        # the copy is done, its marker not written yet: a writer on another host sweeps now
        seen["idle_s"] = staging._idle_s(tmp, time.time())
        with monkeypatch.context() as other_host:
            other_host.setattr(staging, "_host_id", lambda: "f" * 12)
            seen["removed"] = staging.sweep_leftovers(serving)
        return real_mark(tmp, **kw)

    monkeypatch.setattr(staging, "mark_complete", mark_while_another_host_sweeps)
    dest = serving / "v0001-0123456789ab"
    copy_complete(src, dest, "v0001", "0" * 64)

    assert seen["removed"] == []
    assert seen["idle_s"] < 60 < STALE_S
    assert (dest / "adapter_model.safetensors").read_bytes() == b"\0" * 4096
    assert (dest / "sub" / "notes.txt").read_text() == "x"
