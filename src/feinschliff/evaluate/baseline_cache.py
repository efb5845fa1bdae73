"""Reuse of the lm-eval numbers of models a scheduled run evaluated before (``evaluate``).

The base model and the production adapter are usually the same as in the last run: their
lm-eval results (what ``harness.run_tasks`` returns and the per-sample outputs it wrote) are
kept under ``$FEINSCHLIFF_HOME/cache/evaluate/<entry>/`` and copied into the next report instead
of being computed again. Conservative by design, since a stale baseline can promote a worse
model: the entry's key holds everything that can change the numbers (the base model's identity
and dtype, the adapter's file contents, the task list and the bundled task files with their
data, the held-out rows of ``usecase_heldout``, the cached Hub datasets of upstream tasks,
limit, few-shot, batch size, the harness's seeds, the library versions, the code the numbers
pass through and the device), one entry per model and lm-eval call (``harness.lm_eval_calls``):
lm-eval batches the requests of a call's tasks together, so a task's numbers from one task list
are not reused for another. ``usecase_heldout`` has a call and an entry of its own, keyed with
the held-out rows (new feedback recomputes it: it is small); the other tasks' entry does not
depend on them, so it is reused across runs with new feedback. A hub
model whose commit is not in the local HF cache is not cached. Entries are written atomically
(a temporary folder renamed into place, its ``entry.json`` written last) and checked on
reading; a damaged one is recomputed. The candidate's numbers are stored (it may be production
next time) but never reused for a candidate. The ``KEEP`` most recently used entries are kept.
Judge and held-out metrics depend on this run's data: never cached.
``evaluate.reuse_baselines: false`` turns all of this off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from feinschliff.artifacts import hash_tree, input_key, sha256_bytes, sha256_file
from feinschliff.evaluate import harness
from feinschliff.models import feinschliff_home, is_alias
from feinschliff.paths import bundled_tasks_dir
from feinschliff.recipe import Recipe
from feinschliff.specs.common import is_local_path
from feinschliff.specs.evaluate import USECASE_TASK

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what an entry holds changes
MARKER = "entry.json"
# entries kept, most recently used first (a scheduled run uses 2 to 4 and adds up to 6: two
# calls per model when the tasks include usecase_heldout; several use cases share the cache)
KEEP = 64
VERSIONED = ("lm_eval", "transformers", "peft", "torch", "accelerate", "datasets", "tokenizers")
_warned: set[str] = set()

Metrics = dict[str, dict[str, Any]]


def cache_root() -> Path:
    return feinschliff_home() / "cache" / "evaluate"


def run_or_reuse(
    recipe: Recipe,
    role: str,
    model_path: str,
    adapter_dir: str | None,
    *,
    tasks: list[str],
    samples_out: Path,
    heldout_dir: Path | None,
    origin: str,
    run: Callable[[], Metrics],
) -> tuple[Metrics, dict[str, Any] | None]:
    """``run()``'s lm-eval metrics of ``tasks`` for this model, or a cache entry's (its samples
    copied to ``samples_out``) when ``role`` is base or production and an entry with the same
    key is there. Returns the metrics and, when reused, which entry (None when computed).
    ``samples_out`` must hold this call's samples only: the entry stores all of it.

    Only ``harness.run_tasks`` (``run`` itself or the function it wraps) is cached: the key
    says what that function depends on, not what a substitute (a test's fake) does."""
    if not recipe.evaluate.reuse_baselines or getattr(run, "func", run) is not harness.run_tasks:
        return run(), None
    key = lm_eval_key(recipe, model_path, adapter_dir, tasks=tasks, heldout_dir=heldout_dir)
    if key is None:
        return run(), None
    entry = input_key(key)
    if role != "candidate" and (hit := load_entry(entry, key)) is not None:
        metrics, info = hit
        with contextlib.suppress(OSError):  # a read-only cache still serves
            os.utime(cache_root() / entry / MARKER)  # used: kept longest
        try:
            samples_out.mkdir(parents=True, exist_ok=True)
            shutil.copytree(cache_root() / entry / "samples", samples_out, dirs_exist_ok=True)
        except OSError as exc:  # removed meanwhile (another run's prune): compute after all
            log.warning(
                "evaluate: %s: cache entry %s unreadable (%s): recomputing", role, entry, exc
            )
            shutil.rmtree(samples_out, ignore_errors=True)
            return run(), None
        log.info(
            "evaluate: %s: reusing lm-eval results of cache entry %s (computed %s for %s)",
            role,
            entry[:16],
            info["computed_at"],
            info["computed_for"],
        )
        return metrics, info | {"tasks": list(tasks)}
    metrics = run()
    # the model folder or a cached dataset changed while lm-eval ran (an online hub model
    # updated): these numbers belong to neither key
    if lm_eval_key(recipe, model_path, adapter_dir, tasks=tasks, heldout_dir=heldout_dir) == key:
        store_entry(entry, key, metrics, samples_out, role=role, origin=origin)
    return metrics, None


# --------------------------------------------------------------------------- key


def lm_eval_key(
    recipe: Recipe,
    model_path: str,
    adapter_dir: str | None,
    *,
    tasks: list[str] | None = None,
    heldout_dir: Path | None,
) -> dict[str, Any] | None:
    """Everything the numbers of ``run_tasks`` on ``tasks`` (default: the recipe's) depend on,
    or None when the model's identity cannot be known here (a hub id whose commit is not in the
    local HF cache): not cached then. The held-out rows count only when ``tasks`` hold
    ``usecase_heldout``."""
    from feinschliff.train.checks import base_model_fingerprint

    spec, base = recipe.evaluate, recipe.base_model
    tasks = list(spec.tasks if tasks is None else tasks)
    model = base_model_fingerprint(recipe)
    if model is None and not (is_alias(base.name) or is_local_path(base.name)):
        model = _hub_commit(base.name, base.revision)
        if model is None:
            if base.name not in _warned:
                _warned.add(base.name)
                log.info(
                    "evaluate: %s@%s is not in the local HF cache as a known commit: "
                    "its lm-eval results are not cached",
                    base.name,
                    base.revision or "main",
                )
            return None
    tasks_dir = bundled_tasks_dir()
    bundled = harness.bundled_task_files()
    upstream = [t for t in tasks if t not in bundled and t != USECASE_TASK]
    return {
        "format": FORMAT,
        "base_model": {
            "name": base.name,
            "revision": base.revision,
            "path": model_path,
            "identity": model,
        },
        "adapter": hash_tree(Path(adapter_dir)) if adapter_dir else None,
        "dtype": base.dtype,
        "tasks": tasks,
        "limit": spec.limit,
        "num_fewshot": spec.num_fewshot,
        "batch_size": spec.batch_size,
        "harness": {"seeds": harness.SEEDS, "bootstrap_iters": harness.BOOTSTRAP_ITERS},
        # every bundled task is rendered into the include folder: all their files count
        "task_files": hash_tree(tasks_dir, exclude=()),
        "task_data": {t: _sha_or_none(f) for t, f in sorted(bundled.items()) if t in tasks},
        "heldout": _sha_or_none(heldout_dir / "heldout" / "preference.jsonl")
        if USECASE_TASK in tasks and heldout_dir is not None
        else None,
        "hub_datasets": _hub_dataset_refs() if upstream else None,
        "versions": _versions(),
        "code": lm_eval_code(),
        "device": device_identity(),
    }


# Our code the numbers pass through: what run_tasks is called with (stage), how it renders the
# tasks and flattens lm-eval's results (harness), this key, the helpers they use. Not the whole
# package (``artifacts.code_version``): a fix to ingest or the CLI must not recompute baselines.
_CODE = (
    "evaluate/stage.py",
    "evaluate/harness.py",
    "evaluate/baseline_cache.py",
    "artifacts.py",
    "paths.py",
    "specs/evaluate.py",
)


def lm_eval_code() -> str:
    from feinschliff import __version__
    from feinschliff.recipe import USECASE_METRIC_LIST

    package = Path(__file__).resolve().parents[1]
    parts = [__version__, *USECASE_METRIC_LIST]
    parts += [f"{name}:{sha256_file(package / name)}" for name in _CODE]
    return sha256_bytes("\n".join(parts).encode())


def _sha_or_none(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def _hub_cache() -> Path:
    from huggingface_hub.constants import HF_HUB_CACHE

    return Path(HF_HUB_CACHE)


def _hub_commit(name: str, revision: str | None) -> str | None:
    """The commit a hub id resolves to in the local HF cache (a revision that is a commit
    hash is its own identity)."""
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    ref = _hub_cache() / f"models--{name.replace('/', '--')}" / "refs" / (revision or "main")
    try:
        commit = ref.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return commit or None


def _hub_dataset_refs() -> dict[str, str]:
    """Which commit each cached Hub dataset is at: an upstream task's data (a re-fetch that
    moved a dataset to a new commit recomputes)."""
    refs = {}
    for ref in sorted(_hub_cache().glob("datasets--*/refs/**/*")):
        if ref.is_file():
            refs[ref.relative_to(_hub_cache()).as_posix()] = ref.read_text(encoding="utf-8")
    return refs


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def device_identity() -> dict[str, Any]:
    """Where lm-eval runs (``harness.device``): another GPU model, or CPU instead of GPU,
    gives other floating-point results."""
    if harness.device() == "cuda":
        import torch

        return {
            "kind": "cuda",
            "name": torch.cuda.get_device_name(0),
            "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
        }
    return {"kind": "cpu", "machine": platform.machine(), "cpu": _cpu_model()}


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or None


# --------------------------------------------------------------------------- entries


def load_entry(entry: str, key: dict[str, Any]) -> tuple[Metrics, dict[str, Any]] | None:
    """A complete, intact entry's metrics and origin; None when there is none, or when it is
    damaged (then it is removed, with one warning)."""
    folder = cache_root() / entry
    if not folder.exists():
        return None
    try:
        info = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        stored_key = json.loads((folder / "key.json").read_text(encoding="utf-8"))
        if info.get("format") != FORMAT or stored_key != json.loads(json.dumps(key)):
            raise ValueError("written for another key or format")
        if sha256_file(folder / "metrics.json") != info["metrics_sha256"]:
            raise ValueError("metrics.json changed")
        samples = folder / "samples"
        found = sorted(p.relative_to(samples).as_posix() for p in samples.rglob("*") if p.is_file())
        if found != sorted(info["samples"]):
            raise ValueError("sample files missing or added")
        for name, sha in info["samples"].items():
            if sha256_file(samples / name) != sha:
                raise ValueError(f"samples/{name} changed")
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        if entry not in _warned:
            _warned.add(entry)
            log.warning(
                "evaluate: cache entry %s is damaged (%s): recomputing", folder, exc or type(exc)
            )
        _remove(folder)
        return None
    origin = {k: info.get(k) for k in ("computed_at", "computed_for", "role")}
    return metrics, {"entry": entry, "path": str(folder), **origin}


def store_entry(
    entry: str, key: dict[str, Any], metrics: Metrics, samples: Path, *, role: str, origin: str
) -> None:
    """Write an entry atomically; a failure to write (a full disk) only costs the reuse."""
    root = cache_root()
    final = root / entry
    tmp: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry[:16]}-", dir=root))
        (tmp / "key.json").write_text(json.dumps(key, sort_keys=True), encoding="utf-8")
        (tmp / "metrics.json").write_text(json.dumps(metrics, sort_keys=True), encoding="utf-8")
        if samples.is_dir():
            shutil.copytree(samples, tmp / "samples")
        else:
            (tmp / "samples").mkdir()
        files = {
            p.relative_to(tmp / "samples").as_posix(): sha256_file(p)
            for p in sorted((tmp / "samples").rglob("*"))
            if p.is_file()
        }
        info = {
            "format": FORMAT,
            "metrics_sha256": sha256_file(tmp / "metrics.json"),
            "samples": files,
            "computed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "computed_for": origin,
            "role": role,
        }
        (tmp / MARKER).write_text(json.dumps(info, indent=2), encoding="utf-8")  # last
        if final.exists():
            _remove(final)  # damaged (load_entry removes those) or a concurrent writer's
        os.rename(tmp, final)
        tmp = None
        prune(root)
    except OSError as exc:
        log.warning("evaluate: could not store lm-eval results in %s: %s", final, exc)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def prune(root: Path) -> None:
    """Remove all but the ``KEEP`` most recently used entries, and temporary folders of
    writers that died more than a day ago (a removed entry only costs a recomputation)."""
    entries = []
    for folder in root.iterdir():
        try:
            if folder.name.startswith(".tmp-"):
                if time.time() - folder.stat().st_mtime > 86400:
                    shutil.rmtree(folder, ignore_errors=True)
            elif not folder.name.startswith("."):
                entries.append(((folder / MARKER).stat().st_mtime, folder))
        except OSError:
            continue
    for _, folder in sorted(entries, reverse=True)[KEEP:]:
        _remove(folder)


def _remove(folder: Path) -> None:
    """Move aside, then delete: a reader never sees a half-deleted entry as complete."""
    aside = folder.with_name(f".old-{folder.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        folder.rename(aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)
