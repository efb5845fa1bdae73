"""Which replay snapshots (``$FEINSCHLIFF_HOME/datasets/<rows sha256>/``) `feinschliff gc` may
delete.

A training writes its snapshot *before* it trains, and its version records the snapshot's hash
only when it is registered. gc cannot see every training: one in a workdir outside ``runs/``
(``feinschliff run --workdir``), a CLI ``feinschliff train`` whose output is registered later.
A snapshot deleted under such a training is lost for good (warm starts replay nothing), so an
unrecorded snapshot goes only when it is older than ``SNAPSHOT_GRACE_S``; and none goes while a
run (``.run.lock``) or a training (``.train.lock``) holds a workdir in ``runs/``, while a use
case in ``runs/`` has no known registry, or while its last evaluation read production from a
registry gc was not given.

The registries' manifests (network reads for remote ones) are read before the workdirs' locks
are taken; under the locks only versions registered meanwhile are read, so runs are blocked
for as short a time as possible.
"""

from __future__ import annotations

import json
import re
import time
from contextlib import ExitStack
from pathlib import Path

from feinschliff import registry
from feinschliff.housekeeping import Decide, Target, hold_workdir, newest_mtime

SNAPSHOT_RE = re.compile(r"^[0-9a-f]{64}$")
SNAPSHOT_GRACE_S = 14 * 86400
GRACE_WHY = (
    f"kept: written in the last {SNAPSHOT_GRACE_S // 86400} days (a training or its "
    "registration may still need it)"
)

Seen = dict[str, set[str]]  # use case -> versions whose manifests were read


def sweep_datasets(home: Path, targets: dict[str, Target], decide: Decide) -> None:
    """Replay snapshots no known version or finished training records, older than the grace
    period, while no run or training holds a workdir in ``runs/``."""
    snapshots = sorted(
        p
        for p in (home / "datasets").glob("*")
        if SNAPSHOT_RE.match(p.name) and p.is_dir() and not p.is_symlink()
    )
    if not snapshots:
        return
    workdirs = sorted((home / "runs").glob("*/"))
    problem = _unknown_registry(home, workdirs, targets)
    needed: dict[str, str] = {}
    seen: Seen = {}
    if problem is None:  # the slow part (manifests, maybe remote), before any lock is taken
        needed, problem = _registered_snapshots(targets, seen)
    with ExitStack() as held:
        for work in workdirs if problem is None else []:
            if (problem := hold_workdir(work, held)) is not None:
                if problem == "a run is using this workdir now":
                    problem = f"a run is in progress in runs/{work.name} (it may be writing one)"
                break
        if problem is None:  # versions registered since the first read
            more, problem = _registered_snapshots(targets, seen)
            needed |= more
            for sha, why in _trained_snapshots(workdirs).items():
                needed.setdefault(sha, why)
        for snap in snapshots:
            if problem is not None:
                decide("datasets", snap, problem, False)
            elif (why := needed.get(snap.name)) is not None:
                decide("datasets", snap, why, False)
            elif time.time() - newest_mtime(snap) < SNAPSHOT_GRACE_S:
                decide("datasets", snap, GRACE_WHY, False)
            else:
                why = "rows of a training no registered version or run records"
                decide("datasets", snap, why, True)


def _unknown_registry(home: Path, workdirs: list[Path], targets: dict[str, Target]) -> str | None:
    """Why no snapshot may be judged: a workdir in ``runs/`` whose registry gc does not know."""
    unknown = [w.name for w in workdirs if w.name not in targets]
    if unknown:
        return f"no registry known for runs/{unknown[0]}: pass its recipe"
    for work in workdirs:
        elsewhere = _evaluated_registry(home, work)
        if elsewhere is not None and not _same_root(elsewhere, targets[work.name].root):
            return (
                f"runs/{work.name} registers into {elsewhere}, which gc was not given: "
                "pass its recipe"
            )
    return None


def _evaluated_registry(home: Path, work: Path) -> Path | str | None:
    """The registry the workdir's last evaluation read production from (the only registry a
    run records in its workdir): a local root, "a remote registry" for a registry-cache copy,
    or None when it compared with no production."""
    try:
        report = json.loads((work / "evaluate" / "report.json").read_text(encoding="utf-8"))
        adapter = Path(report["models"]["production"]["adapter"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    copy = adapter.parent  # <root>/<use case>/<version>, or registry-cache/<uc>/<version>-<sha>
    if len(copy.parents) < 2:
        return None
    if copy.parents[1] == home / "registry-cache":
        return "a remote registry"
    return copy.parents[1]


def _same_root(recorded: Path | str, root: registry.Root) -> bool:
    if isinstance(recorded, str):  # some remote registry: gc cannot tell which
        return not isinstance(root, Path)
    try:
        return isinstance(root, Path) and recorded.resolve() == root.resolve()
    except (OSError, ValueError):  # a NUL byte in a hand-edited report: not the same
        return False


def _registered_snapshots(
    targets: dict[str, Target], seen: Seen
) -> tuple[dict[str, str], str | None]:
    """Snapshot hash -> the version recording it, for versions not in ``seen`` (added to it);
    or why none may be deleted."""
    needed: dict[str, str] = {}
    for target in targets.values():
        uc = target.use_case
        read = seen.setdefault(uc, set())
        try:
            for v in registry.versions(target.root, uc):
                if v in read:
                    continue
                m = registry.manifest(target.root, uc, v)
                if not isinstance(m, dict) or any(
                    not isinstance(m.get(k), dict | None) for k in ("dataset", "train")
                ):  # missing or not what a registration writes: nothing can be judged
                    raise ValueError(f"{v}/manifest.json is missing or malformed")
                dataset, train = m.get("dataset") or {}, m.get("train") or {}
                for sha in (
                    dataset.get("rows_sha256"),
                    dataset.get("sha256"),
                    train.get("dataset_rows_sha256"),
                ):
                    if isinstance(sha, str) and sha:
                        needed[sha] = f"trained {uc}/{v} (replay of a warm start)"
                read.add(v)
        except (registry.RegistryError, OSError, ValueError) as exc:
            return {}, f"registry of {uc} unreadable ({exc})"
    return needed, None


def _trained_snapshots(workdirs: list[Path]) -> dict[str, str]:
    """Snapshot hash -> the finished training in ``runs/`` recording it (not registered yet)."""
    needed: dict[str, str] = {}
    for work in workdirs:
        try:
            metrics = json.loads((work / "train" / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(metrics, dict):
            continue
        for sha in (metrics.get("dataset_rows_sha256"), metrics.get("dataset_sha256")):
            if isinstance(sha, str) and sha:
                needed.setdefault(sha, f"trained the adapter in {work / 'train'}")
    return needed
