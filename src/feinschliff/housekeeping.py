"""Housekeeping: find, and on request delete, what scheduled runs leave under
``FEINSCHLIFF_HOME`` that nothing needs any more (`feinschliff gc`).

What grows run after run, and what of it is garbage:

- ``runs/<use_case>/train/checkpoints/``: the last two checkpoints of a training (optimizer
  state included, several times the adapter) stay after it finished. A finished training never
  reads them (its ``.complete`` hash leaves them out); an unfinished one resumes from them.
- ``<adapter_dir>/<use_case>/<version>-<sha12>/`` (``register.vllm.adapter_dir``, default
  ``serving/``): one serving copy per version ever served; runtime mode never deletes one.
- ``registry-cache/<use_case>/<version>-<sha12>/``: local copies of a remote registry's versions
  (downloaded again when needed).
- ``datasets/<rows sha256>/``: the rows of every training, kept for a warm start's replay of
  the data a registered version was trained on.

Never touched: the registry, ``models/``, ``venvs/``, the ingest mirrors and watermarks (the
pulled feedback itself), the generate request cache, ledgers and stage outputs other than the
checkpoints of a finished training.

What stays: checkpoints of a training without a valid ``.complete`` (a rerun resumes from them)
or of a workdir a run holds; serving and registry-cache copies of versions an alias names, of
the last ``keep_last`` production versions (at least the recipe's ``keep_versions``), of versions
newer than production (a promotion may be loading one), of what a listed vLLM server has loaded
(an unreachable server keeps them all), and every copy of a use case whose registry (or, for
serving copies, whose recipe) gc was not given; snapshots a version of a known registry or a
finished training in ``runs/`` records, and any written in the last 14 days (a training outside
``runs/``, or one whose output is registered later, is not seen by gc); all of them while a run or
a training holds a workdir in ``runs/``, or a use case in ``runs/`` has no known registry (or its
last evaluation read production from another registry). With ``older_than_s``, whatever changed
more recently stays. The snapshot rules live in ``feinschliff.housekeeping_snapshots``.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from feinschliff import registry
from feinschliff.artifacts import completed_hash
from feinschliff.specs.register import VllmSpec

log = logging.getLogger(__name__)

Kind = Literal["checkpoints", "serving", "registry-cache", "datasets"]
COPY_RE = re.compile(r"^(?P<version>v\d{4,})-(?P<sha>[0-9a-f]{12})$")


class Finding(BaseModel):
    """One folder gc looked at: deleted (or, in a dry run, to be deleted) or kept, and why."""

    kind: Kind
    path: Path
    size: int
    why: str
    delete: bool


class Target(BaseModel):
    """A use case gc knows: its registry and, from its recipe, its serving settings."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    use_case: str
    root: Any  # registry.Root: a local Path or an FsspecStore
    vllm: VllmSpec | None = None
    from_recipe: bool = False


class Policy(BaseModel):
    keep_last: int = 3
    older_than_s: float = 0.0
    delete: bool = False  # False: a dry run


Emit = Callable[[Finding], None]


def folder_size(path: Path) -> int:
    """Bytes in ``path``'s files (symlinks counted as links, never followed)."""
    total = 0
    for p in [path, *path.rglob("*")]:
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            continue
    return total


def newest_mtime(path: Path) -> float:
    try:
        return max(p.lstat().st_mtime for p in [path, *path.rglob("*")])
    except (OSError, ValueError):
        return time.time()


def sweep(home: Path, targets: dict[str, Target], policy: Policy, emit: Emit) -> list[Finding]:
    """Look at every kind of garbage under ``home``; delete it when ``policy.delete``. Each
    finding is passed to ``emit`` as soon as it is decided (and, if so, deleted)."""
    from feinschliff.housekeeping_snapshots import sweep_datasets

    found: list[Finding] = []

    def decide(kind: Kind, path: Path, why: str, delete: bool) -> None:
        if (
            delete
            and policy.older_than_s
            and time.time() - newest_mtime(path) < policy.older_than_s
        ):
            days = policy.older_than_s / 86400
            why, delete = f"changed within the last {days:g} days (--older-than)", False
        finding = Finding(kind=kind, path=path, size=folder_size(path), why=why, delete=delete)
        if delete and policy.delete:
            shutil.rmtree(path)
        found.append(finding)
        emit(finding)

    sweep_checkpoints(home, decide)
    for target in targets.values():
        sweep_copies(home, target, policy, decide)
    serving, cached = _unknown_use_cases(home, targets)
    for name in serving:
        for folder in _copy_dirs(home / "serving", name):
            decide("serving", folder, "no recipe given for this use case: pass it", False)
    for name in cached:
        for folder in _copy_dirs(home / "registry-cache", name):
            decide(
                "registry-cache", folder, "its remote registry is unknown: pass its recipe", False
            )
    sweep_datasets(home, targets, decide)
    return found


Decide = Callable[[Kind, Path, str, bool], None]


def sweep_checkpoints(home: Path, decide: Decide) -> None:
    """The checkpoints of each finished training in ``runs/*/train``, under the workdir's run
    lock and the train folder's own lock: no run can start training into them meanwhile."""
    for work in sorted((home / "runs").glob("*/")):
        ckpt = work / "train" / "checkpoints"
        if not ckpt.is_dir() or ckpt.is_symlink():
            continue
        with ExitStack() as held:
            if (problem := hold_workdir(work, held)) is not None:
                decide("checkpoints", ckpt, problem, False)
            elif completed_hash(work / "train") is None:
                why = "training not finished (no valid .complete): a rerun resumes from them"
                decide("checkpoints", ckpt, why, False)
            else:
                why = "checkpoints of a finished training (its adapter is in train/adapter)"
                decide("checkpoints", ckpt, why, True)


def hold_workdir(work: Path, held: ExitStack) -> str | None:
    """Take ``work``'s run lock and its train folder's lock into ``held``; None, or why the
    workdir must be left alone (a run or training holds it, or a lock cannot be created)."""
    from feinschliff.artifacts import OutputInUse
    from feinschliff.generate.outlock import OutputBusy, hold_output
    from feinschliff.pipeline import RunInProgress, run_lock

    try:
        held.enter_context(run_lock(work))
        held.enter_context(hold_output(work / "train"))
    except (RunInProgress, OutputBusy):
        return "a run is using this workdir now"
    except OutputInUse as exc:  # its lock cannot be created: a read-only or foreign workdir
        return f"{exc}: left alone"
    except OSError as exc:
        return f"cannot lock runs/{work.name} ({exc.strerror or exc}): left alone"
    return None


def _copy_dirs(base: Path, use_case: str) -> list[Path]:
    folder = base / use_case
    if not folder.is_dir() or folder.is_symlink():
        return []
    # a symlinked folder is someone's own layout: never followed, never deleted
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and COPY_RE.match(p.name)
    )


def serving_base(home: Path, spec: VllmSpec | None) -> Path:
    """Where the use case's runtime serving copies live (``staging.stage_files``)."""
    return Path(spec.adapter_dir) if spec and spec.adapter_dir else home / "serving"


def sweep_copies(home: Path, target: Target, policy: Policy, decide: Decide) -> None:
    """Serving copies (with the recipe) and registry-cache copies of one use case, under the
    use case's serve lock: promotions, rollbacks and reconciles stage copies under it."""
    uc = target.use_case
    bases: list[tuple[Kind, Path]] = []
    if not _local(target):  # a local registry is read in place, never cached
        bases.append(("registry-cache", home / "registry-cache"))
    if target.from_recipe:
        bases.insert(0, ("serving", serving_base(home, target.vllm)))
    if not any(_copy_dirs(base, uc) for _, base in bases):
        return
    keep: dict[str, str] = {}
    with _serve_lock(target) as problem:
        if problem is None:
            keep, problem = _needed_versions(target, policy.keep_last)
        for kind, base in bases:
            for folder in _copy_dirs(base, uc):
                m = COPY_RE.match(folder.name)
                assert m is not None  # _copy_dirs matched it
                if problem is not None:
                    decide(kind, folder, problem, False)
                elif (why := keep.get(m["version"])) is not None:
                    decide(kind, folder, why, False)
                elif not _sha_matches(target, m["version"], m["sha"]):
                    decide(kind, folder, "not a copy of this registry's version: left alone", False)
                else:
                    version = m["version"]
                    why = f"copy of {version}: no alias, not among the last kept versions"
                    if kind == "serving":
                        why += ", loaded on no listed server"
                    decide(kind, folder, why, True)


@contextmanager
def _serve_lock(target: Target) -> Iterator[str | None]:
    """The use case's serve lock; yields None, or why the copies must all stay."""
    problem = None
    try:
        if not registry.has_use_case(target.root, target.use_case):
            problem = "the registry does not have this use case: left alone"
    except (registry.RegistryError, OSError) as exc:
        problem = f"registry unreadable ({exc}): left alone"
    with ExitStack() as held:
        if problem is None:
            try:  # a promotion holds it while it stages and loads copies
                held.enter_context(registry.lock(target.root, target.use_case, ".serve.lock"))
            except (registry.RegistryError, OSError) as exc:
                problem = f"cannot take the serve lock ({exc}): left alone"
        yield problem


def _needed_versions(target: Target, keep_last: int) -> tuple[dict[str, str], str | None]:
    """Version -> why its copies stay; or why every copy of the use case stays."""
    root, uc, spec = target.root, target.use_case, target.vllm
    try:
        aliases = registry.read_aliases(root, uc)
        history = registry.production_history(root, uc)
        known = registry.versions(root, uc)
    except (registry.RegistryError, OSError, ValueError) as exc:
        return {}, f"registry unreadable ({exc}): left alone"
    keep: dict[str, str] = {}
    if spec is not None and spec.servers:
        loaded, problem = _loaded_versions(target)
        if problem is not None:
            return {}, problem
        keep |= {v: "loaded on a listed vLLM server" for v in loaded}
    kept = max(keep_last, spec.keep_versions if spec is not None else 0)
    keep |= {v: f"among the last {kept} production versions" for v in history[:kept]}
    production = aliases.get("production")
    for v in known:
        if production is None or int(v[1:]) > int(production[1:]):
            keep[v] = "newer than production (a promotion may be staging it)"
    keep |= {v: f"the {alias} alias" for alias, v in aliases.items() if v}
    return keep, None


def _loaded_versions(target: Target) -> tuple[set[str], str | None]:
    """The versions of this use case a listed server has loaded (by their copy's folder)."""
    from feinschliff.serving.vllm_client import VllmClient, VllmError

    assert target.vllm is not None
    loaded: set[str] = set()
    for server in target.vllm.servers:
        try:
            with VllmClient(server, timeout_s=10, retries=1) as client:
                paths = client.adapters().values()
        except (VllmError, OSError, ValueError, KeyError) as exc:
            return set(), f"cannot ask {server.url} what it serves ({exc}): left alone"
        for path in paths:
            parts = path.rstrip("/").split("/")
            if len(parts) >= 2 and parts[-2] == target.use_case and (m := COPY_RE.match(parts[-1])):
                loaded.add(m["version"])
    return loaded, None


def _sha_matches(target: Target, version: str, sha12: str) -> bool:
    try:
        return registry.adapter_sha256(target.root, target.use_case, version)[:12] == sha12
    except (registry.RegistryError, OSError, ValueError):
        return False


def _unknown_use_cases(home: Path, targets: dict[str, Target]) -> tuple[list[str], list[str]]:
    """Use cases with serving copies in ``home/serving`` but no recipe given, and with
    registry-cache copies but no remote registry known (only remote ones are cached)."""

    def names(base: Path) -> set[str]:
        if not base.is_dir():
            return set()
        return {p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")}

    serving = [n for n in names(home / "serving") if n not in targets or not targets[n].from_recipe]
    cached = [n for n in names(home / "registry-cache") if n not in targets or _local(targets[n])]
    return sorted(serving), sorted(cached)


def _local(target: Target) -> bool:
    return isinstance(target.root, Path)
