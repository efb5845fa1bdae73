"""Run lm-eval tasks on a model (optionally with a PEFT adapter), fully offline.

Bundled tasks live in ``evals/lm_eval_tasks/*.yaml`` with ``data_files`` relative to the YAML.
lm-eval resolves relative ``data_files`` against the *current directory* (FACTS 2), so the
YAMLs are copied into a temporary include directory with absolute paths before each run.
Upstream task names (arc_de, hellaswag_de, ...) need their Hub datasets in the local HF cache;
offline they fail fast with the dataset to pre-fetch named.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from feinschliff.artifacts import jsonl_lines
from feinschliff.paths import bundled_tasks_dir
from feinschliff.recipe import USECASE_METRIC_LIST
from feinschliff.specs.evaluate import USECASE_TASK

log = logging.getLogger(__name__)


# What simple_evaluate is called with besides the recipe's fields (its defaults, named here
# so that the baseline cache's key holds them: another seed gives other numbers)
SEEDS = {
    "random_seed": 0,
    "numpy_random_seed": 1234,
    "torch_random_seed": 1234,
    "fewshot_random_seed": 1234,
}
BOOTSTRAP_ITERS = 1000


class EvalError(RuntimeError):
    """A task cannot run (unknown, or its dataset is not available offline)."""


def render_tasks(src: Path, dest: Path) -> list[str]:
    """Copy task YAMLs to ``dest`` with absolute data_files; returns the task names."""
    names = []
    for yml in sorted(src.glob("*.yaml")):
        cfg = yaml.safe_load(yml.read_text(encoding="utf-8"))
        files = (cfg.get("dataset_kwargs") or {}).get("data_files")
        if isinstance(files, dict):
            cfg["dataset_kwargs"]["data_files"] = {
                split: str((yml.parent / f).resolve()) for split, f in files.items()
            }
        (dest / yml.name).write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
        if "task" in cfg:
            names.append(cfg["task"])
    return names


def render_usecase_task(data_dir: Path | None, dest: Path) -> str:
    """The use-case task: held-out preference pairs from ingest as two-way multiple choice
    (the chosen answer is the target), so lm-eval scores how often a model prefers what users
    preferred."""
    path = data_dir / "heldout" / "preference.jsonl" if data_dir else None
    rows = []
    if path is not None and path.exists():
        for line in jsonl_lines(path.read_text(encoding="utf-8")):
            if line.strip():
                row = json.loads(line)
                user = [m["content"] for m in row["prompt"] if m["role"] == "user"]
                rows.append(
                    {
                        "question": user[-1] if user else "",
                        "choices": [row["chosen"][-1]["content"], row["rejected"][-1]["content"]],
                        "answer": 0,
                    }
                )
    if not rows:
        raise EvalError(
            f"task {USECASE_TASK} needs held-out preference pairs from ingest "
            f"(heldout/preference.jsonl in the data dir; got {data_dir}); pass the ingest "
            "output (`--data`) or raise feedback.heldout_fraction"
        )
    data = dest / f"{USECASE_TASK}.jsonl"
    data.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    cfg = {
        "task": USECASE_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Frage: {{question}}\nAntwort:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "answer",
        # acc_norm only: plain `acc` compares the two answers' *summed* log-likelihoods, and the
        # chosen answers (users' corrections) are several times longer than the rejected ones,
        # so every model gives the rejected answer the higher sum: acc was 0.0 for base,
        # production and candidate alike and could not move. acc_norm divides by the answer's
        # byte length. The names are USECASE_METRIC_LIST, which recipe validation checks
        # gate rules against. Version 2: `acc` dropped.
        "metric_list": [
            {"metric": m, "aggregation": "mean", "higher_is_better": True}
            for m in USECASE_METRIC_LIST
        ],
        "metadata": {"version": 2.0},
    }
    (dest / f"{USECASE_TASK}.yaml").write_text(
        yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8"
    )
    return USECASE_TASK


def bundled_task_files() -> dict[str, Path]:
    """Bundled task name -> its data file (for contamination checks)."""
    out = {}
    for yml in sorted(bundled_tasks_dir().glob("*.yaml")):
        cfg = yaml.safe_load(yml.read_text(encoding="utf-8"))
        files = (cfg.get("dataset_kwargs") or {}).get("data_files") or {}
        for f in files.values() if isinstance(files, dict) else []:
            out[cfg["task"]] = (yml.parent / f).resolve()
    return out


def lm_eval_calls(tasks: list[str]) -> list[list[str]]:
    """The lm-eval calls ``tasks`` are evaluated in: the use-case task in one of its own (its
    held-out rows are new with every run that has new feedback), the others (bundled and
    upstream) together in another, whose numbers (and baseline cache entry) new feedback leaves
    valid. lm-eval batches a call's requests across its tasks, so how the tasks are split can
    move the numbers slightly: every model is evaluated with the same split."""
    static = [t for t in tasks if t != USECASE_TASK]
    usecase = [USECASE_TASK] if USECASE_TASK in tasks else []
    # the use-case task first: a missing held-out split fails before any model has run
    return [part for part in (usecase, static) if part]


def move_samples(src: Path, dest: Path) -> None:
    """Move the per-sample files one call wrote into ``src`` to ``dest`` and remove ``src``.
    ``run_tasks`` names them by task (``<task>.jsonl``): calls on disjoint tasks (the parts of
    ``lm_eval_calls``) do not overwrite each other's."""
    for f in sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else []:
        target = dest / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        f.replace(target)
    shutil.rmtree(src, ignore_errors=True)


def run_tasks(
    model_path: str,
    tasks: list[str],
    *,
    adapter: str | None,
    dtype: str,
    limit: int | None,
    batch_size: int,
    num_fewshot: int,
    samples_out: Path | None = None,
    heldout_dir: Path | None = None,
    revision: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate and return ``{"task/metric": {"value", "stderr", "samples",
    "higher_is_better"}}`` (``flatten_results``).

    ``heldout_dir`` (an ingest output) makes the use-case task ``usecase_heldout`` available.
    ``revision``: the hub model's ``base_model.revision`` (the one the adapter was trained on).
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="feinschliff-tasks-") as tmp:
        bundled = render_tasks(bundled_tasks_dir(), Path(tmp))
        if USECASE_TASK in tasks:
            bundled.append(render_usecase_task(heldout_dir, Path(tmp)))
        upstream = [t for t in tasks if t not in bundled]
        manager = TaskManager(include_path=tmp, include_defaults=bool(upstream))
        if upstream:
            missing = [t for t in upstream if t not in manager.all_tasks]
            if missing:
                raise EvalError(f"unknown lm-eval tasks {missing}; bundled: {bundled}")
            check_offline_datasets(manager, upstream)
        lm = HFLM(
            pretrained=model_path,
            peft=adapter,
            revision=revision or "main",
            dtype=dtype,
            device=device(),
            batch_size=batch_size,
        )
        try:
            out = simple_evaluate(
                model=lm,
                tasks=tasks,
                num_fewshot=num_fewshot,
                limit=limit,
                task_manager=manager,
                log_samples=samples_out is not None,
                bootstrap_iters=BOOTSTRAP_ITERS,
                **SEEDS,
            )
        except Exception as exc:  # lm-eval raises many types; offline datasets are the usual cause
            if "Offline" in type(exc).__name__ or "offline" in str(exc).lower():
                raise EvalError(
                    f"tasks {upstream} need Hub datasets that are not in the local HF cache "
                    f"(offline). Pre-fetch them on a connected machine: {exc}"
                ) from exc
            raise
    assert out is not None
    if samples_out is not None:
        samples_out.mkdir(parents=True, exist_ok=True)
        for task, rows in (out.get("samples") or {}).items():
            with (samples_out / f"{task}.jsonl").open("w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return flatten_results(
        out["results"], out.get("n-samples", {}), out.get("higher_is_better") or {}
    )


def _datasets_of(
    manager: Any, name: str, seen: set[str] | None = None
) -> set[tuple[str, str | None]]:
    seen = seen if seen is not None else set()
    if name in seen or name not in manager.task_index:
        return set()
    seen.add(name)
    cfg = manager.task_index[name].cfg or {}
    if cfg.get("dataset_path"):
        return {(cfg["dataset_path"], cfg.get("dataset_name"))}
    subtasks = cfg.get("task") or []
    found: set[tuple[str, str | None]] = set()
    for sub in subtasks if isinstance(subtasks, list) else [subtasks]:
        if isinstance(sub, str):
            found |= _datasets_of(manager, sub, seen)
    return found


def check_offline_datasets(manager: Any, tasks: list[str]) -> None:
    """Fail before any model loads when an upstream task's Hub dataset is not cached locally."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes"):
        return  # online: lm-eval downloads what it needs
    from huggingface_hub.constants import HF_HUB_CACHE

    missing = []
    for task in tasks:
        for path, name in sorted(_datasets_of(manager, task), key=str):
            if not (Path(HF_HUB_CACHE) / f"datasets--{path.replace('/', '--')}").exists():
                missing.append(f"{task}: {path}" + (f" ({name})" if name else ""))
    if missing:
        raise EvalError(
            "offline (HF_HUB_OFFLINE=1) and these Hub datasets are not in the local HF cache: "
            + "; ".join(missing)
            + ". Pre-fetch them on a connected machine, e.g. "
            "`python -c \"import datasets; datasets.load_dataset('<path>', '<name>')\"`, "
            "and copy the HF cache (HF_HOME) over."
        )


def flatten_results(
    results: dict[str, Any],
    n_samples: dict[str, Any],
    higher_is_better: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """lm-eval's ``results`` as ``{"task/metric": {"value", "stderr", "samples",
    "higher_is_better"}}``; a metric under a filter other than ``none`` is named
    ``task/metric[filter]``.

    ``higher_is_better`` is lm-eval's dict of the same name (``{task: {metric: bool}}``, metric
    names without the filter; a group whose subtasks disagree has None): each entry gets its
    metric's direction, None when lm-eval does not say.
    """
    flat: dict[str, dict[str, Any]] = {}
    directions = higher_is_better or {}
    for task, metrics in results.items():
        # lm-eval fills n-samples for leaf tasks only; a group row counts its samples per metric
        # (sample_count) and in all (sample_len), else its min_samples rules always failed
        n = (n_samples.get(task) or {}).get("effective")
        counts = metrics.get("sample_count")
        task_directions = directions.get(task) or {}
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, int | float):
                continue
            samples = n
            if samples is None and isinstance(counts, dict):
                samples = counts.get(key)
            if samples is None:
                samples = metrics.get("sample_len")
            metric, filt = key.split(",", 1)
            name = f"{task}/{metric}" if filt == "none" else f"{task}/{metric}[{filt}]"
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            direction = task_directions.get(metric)
            flat[name] = {
                "value": float(value),
                "stderr": float(stderr)
                if isinstance(stderr, int | float) and not math.isnan(stderr)
                else None,
                "samples": samples if isinstance(samples, int) else None,
                "higher_is_better": direction if isinstance(direction, bool) else None,
            }
    return flat


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def device() -> str:
    """Where evaluation runs: lm-eval and our own inference (held-out metrics, judge answers)
    use the same device."""
    return "cuda" if _cuda() else "cpu"
