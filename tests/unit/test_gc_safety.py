"""`feinschliff gc` never deletes what a training it cannot see, or a registry it was not given,
still needs; a bad recipe or an unlockable workdir is one line, not a traceback."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.cli_helpers import lock_held_elsewhere, run_cli
from tests.unit.test_gc import DEMO, UC, _lines, _registry, _sha, _snapshot, _training, age


def test_a_fresh_unrecorded_snapshot_stays(home, tmp_path):
    """A `feinschliff run --workdir` outside runs/ (or a CLI training registered later) wrote it
    before training: gc cannot see that training, so it waits out the grace period."""
    _registry(home, count=1, production=1)
    fresh = _snapshot(home, _sha(300))
    old = age(_snapshot(home, _sha(301)), 15)

    with lock_held_elsewhere(tmp_path / "elsewhere", ".run.lock"):
        code, out = run_cli("gc", "--yes")

    assert code == 0, out
    assert fresh.exists() and not old.exists()
    assert "written in the last 14 days" in _lines(out)[f"datasets/{fresh.name}"]


def test_a_cli_training_in_runs_keeps_every_snapshot(home):
    """`feinschliff train --out runs/<uc>/train` holds .train.lock, not .run.lock."""
    _registry(home, count=1, production=1)
    (home / "runs" / UC / "train").mkdir(parents=True)
    orphan = age(_snapshot(home, _sha(300)), 15)

    with lock_held_elsewhere(home / "runs" / UC, ".train.lock"):
        code, out = run_cli("gc", "--yes")

    assert code == 0, out
    assert orphan.exists()
    assert "a run is in progress in runs/" in _lines(out)[f"datasets/{orphan.name}"]


def test_a_workdir_that_registers_elsewhere_keeps_every_snapshot(home, tmp_path):
    """Without its recipe, runs/<uc> is judged by the default registry's folder of that name;
    its last evaluation read production from another registry, whose versions record the
    snapshot production was trained on."""
    _registry(home, count=1, production=1)
    real = _registry(tmp_path / "srv", count=1, production=1)
    work = home / "runs" / UC
    (work / "evaluate").mkdir(parents=True)
    report = {"models": {"production": {"adapter": str(real / "v0001" / "adapter")}}}
    (work / "evaluate" / "report.json").write_text(json.dumps(report))
    snap = age(_snapshot(home, "f" * 64), 15)  # production's rows, in the other registry

    code, out = run_cli("gc", "--yes")

    assert code == 0, out
    assert snap.exists()
    line = _lines(out)[f"datasets/{snap.name}"]
    assert f"runs/{UC} registers into {real.parent}, which gc was not given" in line


def test_one_use_case_with_two_registries_is_refused(home, tmp_path):
    other = tmp_path / "other.yaml"
    text = Path(DEMO).read_text(encoding="utf-8")
    other.write_text(
        text.replace("register:\n", f"register:\n  registry: {tmp_path / 'reg'}\n", 1),
        encoding="utf-8",
    )
    orphan = age(_snapshot(home, _sha(300)), 15)

    code, out = run_cli("gc", DEMO, str(other), "--yes")

    assert code == 2
    assert out.strip().count("\n") == 0 and DEMO in out and str(other) in out, out
    assert orphan.exists()


def test_an_unknown_registry_scheme_is_one_line(home):
    code, out = run_cli("gc", DEMO, "--set", "register.registry=foo://bar/x")

    assert code == 2
    assert out.strip().count("\n") == 0 and "foo://" in out and DEMO in out, out


@pytest.mark.parametrize("lock", [".run.lock", ".train.lock"])
def test_a_workdir_whose_lock_cannot_be_created_is_kept(home, lock):
    """A foreign or read-only runs/<uc>: kept with the reason, and gc goes on."""
    _registry(home, count=1, production=1)
    train = _training(home)
    (home / "runs" / UC / lock).mkdir()  # not a file: the lock cannot be opened
    orphan = age(_snapshot(home, _sha(300)), 15)

    code, out = run_cli("gc", "--yes")

    assert code == 0, out
    assert (train / "checkpoints").is_dir() and orphan.exists()
    assert "left alone" in _lines(out)[f"runs/{UC}/train/checkpoints"]
    assert "left alone" in _lines(out)[f"datasets/{orphan.name}"]


def test_registry_manifests_are_read_before_the_run_locks(home, monkeypatch):
    """A run starting meanwhile is blocked only by the cheap re-check, not by manifest reads
    (network for a remote registry)."""
    from feinschliff import registry
    from feinschliff.pipeline import RunInProgress, run_lock

    _registry(home, count=3, production=3)
    _training(home, rows=_sha(200))
    orphan = age(_snapshot(home, _sha(300)), 15)
    read = registry.manifest
    blocked: list[str] = []

    def manifest(root, uc, version):
        try:
            with run_lock(home / "runs" / UC):
                pass
        except RunInProgress:
            blocked.append(version)
        return read(root, uc, version)

    monkeypatch.setattr(registry, "manifest", manifest)

    code, out = run_cli("gc", "--yes")

    assert code == 0, out
    assert not orphan.exists()
    assert blocked == []


def test_a_training_reusing_an_old_snapshot_refreshes_it(home, monkeypatch):
    """A new training of rows trained on weeks ago finds their snapshot there and keeps it
    without writing: it now marks it as used, so gc's 14-day grace covers the new training."""
    from feinschliff.housekeeping_snapshots import SNAPSHOT_GRACE_S
    from feinschliff.train.data import snapshot_dir, snapshot_rows

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(home))
    sha = _sha(302)
    path = snapshot_rows("sft", [{"messages": []}], sha)
    age(snapshot_dir(sha), 15)
    assert snapshot_rows("sft", [{"messages": []}], sha) == path
    assert time.time() - path.stat().st_mtime < SNAPSHOT_GRACE_S


@pytest.mark.parametrize(
    "manifest", [None, {"adapter_sha256": "a" * 64, "dataset": "x"}, {"dataset": {"sha256": []}}]
)
def test_a_malformed_registry_manifest_keeps_every_snapshot_in_one_line(home, manifest):
    """A missing or hand-broken manifest.json was an AttributeError/TypeError traceback; it
    cannot say which rows it was trained on, so nothing is judged unrecorded."""
    registry = _registry(home, count=1, production=1)
    target = registry / "v0001" / "manifest.json"
    if manifest is None:
        target.unlink()
    else:
        target.write_text(json.dumps(manifest))
    (home / "runs" / UC).mkdir(parents=True)
    old = age(_snapshot(home, _sha(303)), 15)

    code, out = run_cli("gc", "--yes")

    assert code == 0 and "Traceback" not in out, out
    if isinstance(manifest, dict) and isinstance(manifest["dataset"], dict):
        return  # a list where a sha belongs records nothing: judged as the others are
    assert old.exists() and "unreadable" in _lines(out)[f"datasets/{old.name}"]


def test_a_replayed_snapshot_is_marked_used(home, monkeypatch):
    """A warm start replays production's snapshot, often weeks old: reading it marks it used."""
    from feinschliff.train.data import replay_rows, snapshot_dir, snapshot_rows

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(home))
    sha = _sha(304)
    path = snapshot_rows("sft", [{"messages": []}], sha)
    age(snapshot_dir(sha), 15)
    assert replay_rows("sft", sha) == [{"messages": []}]
    assert time.time() - path.stat().st_mtime < 86400
