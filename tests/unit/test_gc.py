"""`feinschliff gc`: what weeks of scheduled runs leave under FEINSCHLIFF_HOME (checkpoints of
finished trainings, serving copies of every version ever served, replay snapshots of every
training) is listed with sizes and reasons, deleted only with --yes, and nothing a rerun, the
registry, an alias, a server or a running stage needs is ever touched."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from feinschliff.artifacts import completed_hash, mark_complete
from tests.cli_helpers import lock_held_elsewhere, run_cli

UC = "support-de-demo"
DEMO = "recipes/demo-de.yaml"
LINE = re.compile(r"^(delete|deleted|keep) +[\d.]+ [KMGT]?B  (?P<path>\S+)  \(.*\)$")


def _sha(n: int) -> str:
    return f"{n:x}" * 64 if n < 16 else f"{n:064x}"


def _training(home: Path, *, finished: bool = True, rows: str = "") -> Path:
    train = home / "runs" / UC / "train"
    (train / "adapter").mkdir(parents=True)
    (train / "adapter" / "adapter_model.safetensors").write_bytes(b"a" * 1000)
    (train / "metrics.json").write_text(json.dumps({"dataset_rows_sha256": rows or None}))
    (train / ".inputs").write_text("key\ntrain\n")
    ckpt = train / "checkpoints" / "checkpoint-10"
    ckpt.mkdir(parents=True)
    (ckpt / "optimizer.pt").write_bytes(b"o" * 5000)
    if finished:
        mark_complete(train, stage="train", key="key")
    return train


def _registry(home: Path, count: int, production: int | None) -> Path:
    """Versions v0001..v000<count>, production moved through v0001..<production>."""
    uc = home / "registry" / UC
    for n in range(1, count + 1):
        v = uc / f"v{n:04d}"
        (v / "adapter").mkdir(parents=True)
        manifest = {"adapter_sha256": _sha(n), "dataset": {"rows_sha256": _sha(100 + n)}}
        (v / "manifest.json").write_text(json.dumps(manifest))
        (v / ".complete").write_text("{}")
    moves = [
        {"event": "alias", "alias": "production", "old": None, "new": f"v{n:04d}"}
        for n in range(1, (production or 0) + 1)
    ]
    (uc / "audit.jsonl").write_text("".join(json.dumps(m) + "\n" for m in moves))
    aliases = {}
    if production:
        aliases["production"] = f"v{production:04d}"
        if production > 1:
            aliases["previous"] = f"v{production - 1:04d}"
    (uc / "aliases.json").write_text(json.dumps(aliases))
    return uc


def _copy(base: Path, n: int, sha: str | None = None) -> Path:
    folder = base / UC / f"v{n:04d}-{(sha or _sha(n))[:12]}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"w" * 2000)
    return folder


def _lines(out: str) -> dict[str, str]:
    """Shown path -> its line."""
    found = (LINE.match(line) for line in out.splitlines())
    return {m["path"]: m[0] for m in found if m}


def test_dry_run_lists_finished_checkpoints_and_deletes_nothing(home):
    train = _training(home)

    code, out = run_cli("gc")

    assert code == 0, out
    line = _lines(out)[f"runs/{UC}/train/checkpoints"]
    assert line.startswith("delete") and "4.9 KB" in line and "finished training" in line
    assert "dry run: 4.9 KB in 1 folder would be freed" in out and "--yes" in out
    assert (train / "checkpoints").is_dir()


def test_yes_deletes_finished_checkpoints_and_the_training_stays_reusable(home):
    train = _training(home)
    before = completed_hash(train)

    code, out = run_cli("gc", "--yes")

    assert code == 0, out
    assert _lines(out)[f"runs/{UC}/train/checkpoints"].startswith("deleted")
    assert "freed 4.9 KB (1 folder)" in out
    assert not (train / "checkpoints").exists()
    assert completed_hash(train) == before  # a rerun still reuses the finished training


def test_an_unfinished_training_keeps_its_checkpoints(home):
    """A training killed midway resumes from them on the rerun."""
    train = _training(home, finished=False)

    code, out = run_cli("gc", "--yes")

    assert code == 0, out
    line = _lines(out)[f"runs/{UC}/train/checkpoints"]
    assert line.startswith("keep") and "resumes" in line
    assert (train / "checkpoints" / "checkpoint-10" / "optimizer.pt").exists()


def test_a_workdir_held_by_a_run_is_left_alone(home):
    train = _training(home)

    with lock_held_elsewhere(home / "runs" / UC, ".run.lock"):
        code, out = run_cli("gc", "--yes")

    assert code == 0, out
    assert "a run is using this workdir now" in _lines(out)[f"runs/{UC}/train/checkpoints"]
    assert (train / "checkpoints").is_dir()


def _serving_recipe(tmp_path: Path, servers: str) -> list[str]:
    serving = tmp_path / "serving"
    vllm = (
        f"register.vllm={{servers: {servers}, model: smollm2-135m-instruct, "
        f"adapter_dir: {serving}, keep_versions: 1}}"
    )
    return [DEMO, "--set", vllm]


def test_serving_copies_of_superseded_versions_go_the_needed_ones_stay(home, tmp_path):
    """Runtime mode never deletes a copy; gc keeps alias targets, the last --keep-last
    production versions, versions newer than production and foreign copies."""
    _registry(home, count=6, production=5)
    base = home / "serving"  # the default adapter_dir (a recipe without register.vllm)
    copies = {n: _copy(base, n) for n in range(1, 7)}
    foreign = _copy(base, 2, sha="f" * 64)  # another registry's v0002: not ours to judge

    code, out = run_cli("gc", DEMO, "--keep-last", "3", "--yes")

    assert code == 0, out
    assert not copies[1].exists() and not copies[2].exists()
    for n in (3, 4, 5, 6):
        assert copies[n].exists(), out
    assert foreign.exists()
    shown = {Path(k).name: line for k, line in _lines(out).items()}
    assert "production alias" in shown[copies[5].name]
    assert "previous alias" in shown[copies[4].name]
    assert "last 3 production versions" in shown[copies[3].name]
    assert "newer than production" in shown[copies[6].name]
    assert "not a copy of this registry's version" in shown[foreign.name]
    assert shown[copies[1].name].startswith("deleted")


def test_a_copy_a_server_has_loaded_stays(home, tmp_path, monkeypatch):
    from feinschliff.serving.vllm_client import VllmClient

    _registry(home, count=4, production=4)
    base = tmp_path / "serving"
    old = _copy(base, 1)
    monkeypatch.setattr(VllmClient, "adapters", lambda self: {f"{UC}@v0001": str(old)})
    servers = '[{url: "http://127.0.0.1:9"}]'

    code, out = run_cli("gc", *_serving_recipe(tmp_path, servers), "--keep-last", "0", "--yes")

    assert code == 0, out
    assert old.exists() and "loaded on a listed vLLM server" in _lines(out)[str(old)]


def test_an_unreachable_server_keeps_every_copy(home, tmp_path):
    _registry(home, count=4, production=4)
    old = _copy(tmp_path / "serving", 1)
    servers = '[{url: "http://127.0.0.1:9"}]'  # nothing listens there

    code, out = run_cli("gc", *_serving_recipe(tmp_path, servers), "--keep-last", "0", "--yes")

    assert code == 0, out
    assert old.exists() and "cannot ask http://127.0.0.1:9" in _lines(out)[str(old)]


def test_serving_copies_without_a_recipe_stay(home):
    """Without the recipe gc cannot know which servers load them."""
    _registry(home, count=3, production=3)
    old = _copy(home / "serving", 1)

    code, out = run_cli("gc", "--yes")

    assert code == 0, out
    assert old.exists() and "pass it" in _lines(out)[f"serving/{UC}/{old.name}"]


def _snapshot(home: Path, sha: str) -> Path:
    folder = home / "datasets" / sha
    folder.mkdir(parents=True)
    (folder / "sft.jsonl").write_text('{"messages": []}\n' * 10)
    return folder


def age(folder: Path, days: float) -> Path:
    """Make ``folder`` and its files look last written ``days`` ago."""
    then = time.time() - days * 86400
    for p in [*folder.rglob("*"), folder]:
        os.utime(p, (then, then))
    return folder


def test_snapshots_no_version_or_run_records_go(home):
    """Old ones: an unrecorded snapshot of the last 14 days stays (test_gc_safety)."""
    _registry(home, count=2, production=2)
    _training(home, rows=_sha(200))
    registered = age(_snapshot(home, _sha(101)), 15)
    pending = age(_snapshot(home, _sha(200)), 15)  # the finished training not registered yet
    orphan = age(_snapshot(home, _sha(300)), 15)

    code, out = run_cli("gc", "--yes")

    assert code == 0, out
    assert registered.exists() and pending.exists() and not orphan.exists()
    shown = _lines(out)
    assert f"{UC}/v0001" in shown[f"datasets/{registered.name}"]
    assert "trained the adapter" in shown[f"datasets/{pending.name}"]


def test_snapshots_stay_while_a_run_is_in_progress_or_a_use_case_is_unknown(home):
    _registry(home, count=1, production=1)
    orphan = age(_snapshot(home, _sha(300)), 15)
    (home / "runs" / UC).mkdir(parents=True)

    with lock_held_elsewhere(home / "runs" / UC, ".run.lock"):
        code, out = run_cli("gc", "--yes")
    assert code == 0 and orphan.exists() and "a run is in progress" in out

    (home / "runs" / "other-use-case").mkdir()  # its registry may be anywhere
    code, out = run_cli("gc", "--yes")
    assert code == 0 and orphan.exists() and "runs/other-use-case: pass its recipe" in out


def test_older_than_keeps_what_changed_recently(home):
    train = _training(home)

    code, out = run_cli("gc", "--older-than", "2", "--yes")

    assert code == 0, out
    assert "changed within the last 2 days" in _lines(out)[f"runs/{UC}/train/checkpoints"]
    assert (train / "checkpoints").is_dir()
    assert "freed 0 B (0 folders)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--keep-last", "-1"], "--keep-last: expected a whole number >= 0, got '-1'"),
        (["--keep-last", "two"], "--keep-last: expected a whole number >= 0, got 'two'"),
        (["--older-than", "x"], "--older-than: expected a number of days >= 0, got 'x'"),
        (["--older-than", "nan"], "--older-than: expected a number of days >= 0, got 'nan'"),
        (["--set", "train.method=dpo"], "--set changes a recipe: give one"),
    ],
)
def test_bad_options_exit_2_with_one_line(home, args, message):
    train = _training(home)

    code, out = run_cli("gc", "--yes", *args)

    assert (code, out.strip()) == (2, message)
    assert (train / "checkpoints").is_dir()


def test_an_empty_home_has_nothing_to_clean(home):
    code, out = run_cli("gc")
    assert code == 0 and "dry run: 0 B in 0 folders would be freed" in out


def test_registry_cache_of_a_remote_registry_keeps_only_what_is_needed(home, tmp_path):
    """Local copies of an object-store registry's versions: re-downloadable, so superseded
    ones go; production's (a warm start reads it) stays."""
    import uuid

    import fsspec

    url = f"memory://gc-{uuid.uuid4().hex[:8]}/registry"
    local = _registry(tmp_path / "src", count=3, production=3)
    fs = fsspec.filesystem("memory")
    for f in local.rglob("*"):
        if f.is_file():
            fs.pipe(f"{url}/{UC}/{f.relative_to(local).as_posix()}", f.read_bytes())
    cache = home / "registry-cache"
    old, prod = _copy(cache, 1), _copy(cache, 3)

    code, out = run_cli(
        "gc", DEMO, "--set", f"register.registry={url}", "--keep-last", "1", "--yes"
    )

    assert code == 0, out
    assert not old.exists() and prod.exists()
    assert "production alias" in _lines(out)[f"registry-cache/{UC}/{prod.name}"]


def test_copies_of_a_local_registry_in_registry_cache_are_left_alone(home):
    """Only remote registries are cached: such a copy belongs to a registry gc was not given."""
    _registry(home, count=3, production=3)
    stray = _copy(home / "registry-cache", 1)

    code, out = run_cli("gc", "--yes")

    assert code == 0 and stray.exists()
    assert "remote registry is unknown" in _lines(out)[f"registry-cache/{UC}/{stray.name}"]


def test_the_registry_models_and_mirrors_are_never_touched(home, tmp_path):
    models = home / "models"  # the fixture links the shared model cache here
    if not models.exists():
        (models / "m").mkdir(parents=True)
        (models / "m" / "model.safetensors").write_bytes(b"m" * 100)
    before = sorted(p.name for p in models.iterdir())
    mirror = home / "ingest" / "mirror" / "langfuse-x" / "20261127"
    mirror.mkdir(parents=True)
    (mirror / "observations-page-1.json").write_text("{}")
    uc = _registry(home, count=3, production=3)
    _training(home)
    _copy(home / "serving", 1)

    code, out = run_cli("gc", DEMO, "--keep-last", "0", "--yes")

    assert code == 0, out
    assert sorted(p.name for p in models.iterdir()) == before
    assert (mirror / "observations-page-1.json").exists()
    assert all((uc / f"v000{n}" / ".complete").exists() for n in (1, 2, 3))
    assert not any(word in out for word in ("models/", "registry/", "ingest/"))
