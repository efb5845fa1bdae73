"""The evaluate stage: base model, production adapter (if any) and candidate, side by side.

Per role: the recipe's lm-eval tasks, held-out feedback metrics (preference accuracy, chrF against
corrections) and, when configured, LLM-as-judge grades; for the candidate also the judge win rate
against production (or base). Plus ``contamination/overlaps``: training rows that hold text of the
evaluated task data and the bundled judge questions (an n-gram,
``feedback.decontamination.ngram`` words, 13 by default, or a whole item of 8 to n-1 words;
``feinschliff.ngrams``; upstream tasks have no local data and are listed as ``unchecked``, and
the value is None when nothing could be checked), and
``poisoning/suspicious_rows`` (``feinschliff.poisoning``); both scan what the candidate was
trained on: the data's rows and the rows a warm start replayed (``trained_data``). Data the
candidate's train output records as not its own is refused before anything runs. Writes
``report.json`` (``metrics[role]["name"] = {value, stderr, samples, ...}``), ``report.md``
(table with deltas) and ``comparison.png``; per-sample outputs go to ``samples/``. The gate
reads ``report.json`` only.
"""

from __future__ import annotations

import json
import logging
import shutil
from functools import partial
from pathlib import Path
from typing import Any

from feinschliff.artifacts import (
    AdapterRef,
    DatasetRef,
    OutputInUse,
    ReportRef,
    code_version,
    hash_tree,
    input_key,
    jsonl_lines,
    mark_complete,
    prepare_out,
    reusable,
    rows_sha256,
    write_json,
)
from feinschliff.evaluate.baseline_cache import run_or_reuse
from feinschliff.evaluate.harness import bundled_task_files, lm_eval_calls, move_samples, run_tasks
from feinschliff.evaluate.judge import check_judge
from feinschliff.evaluate.trained_data import check_trained_on, replayed_rows
from feinschliff.models import resolve_model
from feinschliff.ngrams import N, contaminated, index_jsonl
from feinschliff.paths import judge_questions_file, project_root
from feinschliff.pipeline import eval_data_fingerprint
from feinschliff.plots import plot_comparison
from feinschliff.poisoning import scan_dataset
from feinschliff.recipe import Recipe
from feinschliff.recipe_loader import section_hash
from feinschliff.specs.evaluate import USECASE_TASK

log = logging.getLogger(__name__)


def run_evaluate(
    recipe: Recipe,
    adapter: AdapterRef,
    out: Path,
    *,
    production: AdapterRef | None = None,
    data: DatasetRef | None = None,
) -> ReportRef:
    refuse_overlap(out, adapter=adapter, data=data)
    if data is not None:
        check_trained_on(adapter, data)  # TrainedOnOtherData before anything is evaluated
    key = cache_key(recipe, adapter, production, data)
    if digest := reusable(out, key):
        log.info("evaluate: reusing finished report in %s", out)
        return ReportRef(path=str(out), sha256=digest)
    prepare_out(out, key, "evaluate")
    spec = recipe.evaluate
    skipped: dict[str, str] = {}
    if production is not None and (why := other_base_model(recipe, production)):
        # its adapter does not fit this base model (PEFT fails on the shapes, or quietly runs
        # weights learnt on another model): no baseline; the gate compares with base instead
        log.warning("evaluate: production not evaluated: %s", why)
        skipped["production"], production = why, None
    elif production is not None and same_adapter(production, adapter):
        # compared with itself it passes no_regression by definition (the flow leaves it out
        # too, flows.tasks._production): base is the baseline
        skipped["production"], production = "production is the candidate", None
    if data is not None and spec.judge is not None:
        check_judge(spec.judge)  # a judge that refuses fails now, not after every model ran
    model_path = resolve_model(recipe.base_model.name)
    roles: dict[str, str | None] = {"base": None}
    hashes: dict[str, str | None] = {"base": None}
    if production is not None:
        roles["production"] = str(production.dir / "adapter")
        hashes["production"] = production.sha256
    roles["candidate"] = str(adapter.dir / "adapter")
    hashes["candidate"] = adapter.sha256

    metrics: dict[str, dict[str, Any]] = {}
    reused: dict[str, list[dict[str, Any]] | None] = {}
    for role, adapter_dir in roles.items():
        metrics[role], reused[role] = evaluate_lm(recipe, role, model_path, adapter_dir, out, data)
    if data is not None and (spec.heldout or spec.judge):
        from feinschliff.evaluate.extra import judge_and_heldout

        extra = judge_and_heldout(recipe, model_path, roles, data.dir, out)
        for role, entries in extra.items():
            metrics.setdefault(role, {}).update(entries)
    if data is not None:
        # what was trained: the data's rows and the older rows a warm start replayed
        replayed = replayed_rows(adapter, data)
        metrics["candidate"]["contamination/overlaps"] = contamination(
            data.dir,
            spec.tasks,
            recipe.feedback.decontamination.ngram,
            judge_questions=spec.judge is not None and spec.judge.asks_bundled,
            replayed=replayed,
        )
        metrics["candidate"]["poisoning/suspicious_rows"] = scan_dataset(
            data.dir, replayed=replayed
        )

    report = {
        "stage": "evaluate",
        "use_case": recipe.use_case,
        "tasks": spec.tasks,
        "limit": spec.limit,
        # the adapter's content hash (its train output's .complete hash): `register --report`
        # checks it, so a report about another adapter cannot promote this one
        "models": {
            role: {
                "base_model": recipe.base_model.name,
                "adapter": path,
                "adapter_sha256": hashes[role],
                # the cache entries its lm-eval numbers came from, each with the tasks it
                # holds (harness.lm_eval_calls); None: all computed in this run
                "lm_eval_reused": reused[role],
            }
            | ({"dataset_sha256": data.sha256} if role == "candidate" and data else {})
            for role, path in roles.items()
        },
        # the data the held-out, contamination and poisoning numbers are about (the one the
        # candidate was trained on: checked above); None without --data
        "data": {
            "path": str(data.dir),
            "sha256": data.sha256,
            "rows_sha256": rows_sha256(data),
        }
        if data is not None
        else None,
        "metrics": metrics,
        "skipped": skipped,  # role -> why it was not evaluated
    }
    write_json(out / "report.json", report)
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    plot_comparison(
        {
            role: {m: v["value"] for m, v in per.items() if _plottable(m, v)}
            for role, per in metrics.items()
        },
        out / "comparison.png",
        title=f"{recipe.use_case}: " + " vs ".join(roles),
    )
    digest = mark_complete(out, stage="evaluate", key=key)
    return ReportRef(path=str(out), sha256=digest)


def evaluate_lm(
    recipe: Recipe,
    role: str,
    model_path: str,
    adapter_dir: str | None,
    out: Path,
    data: DatasetRef | None,
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """One model's lm-eval metrics, one call (and baseline cache entry) per part of
    ``lm_eval_calls``, and the cache entries reused (None: none). Each call writes its samples
    into a folder of its own (its cache entry stores that folder), then into samples/<role>/."""
    spec = recipe.evaluate
    metrics: dict[str, Any] = {}
    reused: list[dict[str, Any]] = []
    for n, tasks in enumerate(lm_eval_calls(spec.tasks)):
        log.info("evaluate: %s on %s", role, ", ".join(tasks))
        # the held-out rows only where they are evaluated: the other call does not depend on them
        heldout_dir = data.dir if data is not None and USECASE_TASK in tasks else None
        part = out / "samples" / f".{role}-{n}"
        shutil.rmtree(part, ignore_errors=True)  # a crashed run's
        run = partial(
            run_tasks,
            model_path,
            tasks,
            adapter=adapter_dir,
            dtype=recipe.base_model.dtype,
            limit=spec.limit,
            batch_size=spec.batch_size,
            num_fewshot=spec.num_fewshot,
            samples_out=part,
            heldout_dir=heldout_dir,
            revision=recipe.base_model.revision,
        )
        got, hit = run_or_reuse(
            recipe,
            role,
            model_path,
            adapter_dir,
            tasks=tasks,
            samples_out=part,
            heldout_dir=heldout_dir,
            origin=str(out),
            run=run,
        )
        metrics.update(got)
        reused += [hit] if hit else []
        move_samples(part, out / "samples" / role)
    return metrics, reused or None


def same_adapter(a: AdapterRef, b: AdapterRef) -> bool:
    """Whether two outputs hold the same adapter files (a registered version and the train
    output it came from differ in everything else)."""
    return hash_tree(a.dir / "adapter") == hash_tree(b.dir / "adapter")


def other_base_model(recipe: Recipe, production: AdapterRef) -> str | None:
    """Why the production version cannot be compared with on the recipe's base model (it was
    trained on another one: the recipe's base model was changed), or None when it can. A
    version whose manifest names no base model is compared as before."""
    from feinschliff.train.warm_start import WarmStartError, check_same_base

    try:
        manifest = json.loads((production.dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    recorded = manifest.get("base_model") or {}
    version = manifest.get("version") or production.dir.name
    try:
        check_same_base(recipe, recorded, version)
    except WarmStartError:
        return (
            f"production {recipe.use_case}/{version} was trained on base model "
            f"{recorded.get('name')}, not on {recipe.base_model.name}"
        )
    return None


def refuse_overlap(out: Path, *, adapter: AdapterRef | None, data: DatasetRef | None) -> None:
    """Refuse an output folder that is, holds or lies inside the adapter or the data being
    evaluated: writing the report there would change (or, replacing leftovers, delete) them."""
    target = out.resolve()
    for what, ref in (("adapter", adapter), ("data", data)):
        if ref is None:
            continue
        src = ref.dir.resolve()
        if target == src or src in target.parents or target in src.parents:
            raise OutputInUse(
                f"--out {out} overlaps the {what} folder {ref.dir}: "
                "choose a separate output folder (nothing was written)"
            )


def cache_key(
    recipe: Recipe,
    adapter: AdapterRef,
    production: AdapterRef | None = None,
    data: DatasetRef | None = None,
) -> str:
    """What a finished report depends on: its recipe sections, the contamination metric's n,
    the candidate, the production adapter it is compared with, the rows, the bundled eval and
    judge data and the code."""
    from feinschliff.train.checks import base_model_fingerprint

    return input_key(
        section_hash(recipe, "base_model", "evaluate"),
        base_model_fingerprint(recipe),  # a base folder replaced by another model: evaluate again
        recipe.feedback.decontamination.ngram,
        adapter.sha256,
        production.sha256 if production else None,
        rows_sha256(data) if data else None,
        eval_data_fingerprint(),
        code_version(),
    )


def _plottable(name: str, v: dict[str, Any]) -> bool:
    value = v.get("value")
    return (
        isinstance(value, float | int)
        and 0.0 <= value <= 1.0
        and not name.startswith(("contam", "poison"))
    )


def contamination(
    data_dir: Path,
    tasks: list[str],
    ngram: int = N,
    *,
    judge_questions: bool = False,
    replayed: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Training rows holding text of the evaluated data, by the contamination rule ingest and
    generate apply (``feinschliff.ngrams``), with the recipe's n
    (``feedback.decontamination.ngram``) as they use it. The rows: the data's and the
    ``replayed`` rows a warm start mixed into the training (counted as ``replayed_rows``; they
    were decontaminated against the tasks of their own time only).

    Checked: the bundled tasks among ``tasks`` and, with ``judge_questions``, the bundled judge
    questions. ``usecase_heldout`` (and the judge's held-out questions) is ingest's held-out
    split, kept out of the training rows by construction: listed under ``held_out``, nothing to
    check. Upstream lm-eval tasks have no local data to check: listed under ``unchecked``. When
    there was eval data to check and none of it could be, the value is None (not 0): the gate
    treats that as a missing metric, so its contamination rule fails instead of passing on an
    unchecked set.
    """
    bundled = bundled_task_files()
    files = [f for t, f in bundled.items() if t in tasks]
    if judge_questions:
        files.append(judge_questions_file())
    held_out = [t for t in tasks if t == USECASE_TASK]
    unchecked = [t for t in tasks if t not in bundled and t != USECASE_TASK]
    if unchecked:
        log.warning(
            "contamination: cannot check %s (no local eval data: upstream lm-eval tasks)",
            ", ".join(unchecked),
        )
    index = index_jsonl(files, ngram)
    rows = []
    for name in ("sft.jsonl", "preference.jsonl", "kto.jsonl"):  # whatever the method trains on
        path = data_dir / name
        if path.exists():
            rows += [json.loads(line) for line in jsonl_lines(path.read_text(encoding="utf-8"))]
    rows += replayed or []
    hits = contaminated(rows, index)
    return {
        "value": float(len(hits)) if files or not unchecked else None,
        "stderr": None,
        "samples": len(rows),
        "eval_files": [str(f.relative_to(project_root())) for f in files],
        "unchecked": unchecked,
        "held_out": held_out,
        "ngram": ngram,
        "replayed_rows": len(replayed or []),
    }


def render_markdown(report: dict[str, Any]) -> str:
    metrics: dict[str, dict[str, Any]] = report["metrics"]
    roles = list(metrics)
    names = sorted({m for per in metrics.values() for m in per})
    head = "| metric | " + " | ".join(roles) + " | candidate - base |"
    lines = [f"# Evaluation: {report['use_case']}", "", head, "|" + "---|" * (len(roles) + 2)]
    for name in names:
        cells = []
        for role in roles:
            v = metrics[role].get(name)
            cells.append("n/a" if v is None or v.get("value") is None else _fmt(v))
        base, cand = metrics.get("base", {}).get(name), metrics.get("candidate", {}).get(name)
        ok = base and cand and base.get("value") is not None and cand.get("value") is not None
        delta = f"{cand['value'] - base['value']:+.4f}" if ok else "n/a"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {delta} |")
    for role, why in (report.get("skipped") or {}).items():
        lines += ["", f"{role.capitalize()} not evaluated: {why}."]
    for role, model in (report.get("models") or {}).items():
        for hit in model.get("lm_eval_reused") or []:
            lines += [
                "",
                f"{role.capitalize()}: lm-eval results of {', '.join(hit['tasks'])} reused from "
                f"cache entry {hit['entry'][:16]} (computed {hit['computed_at']} for "
                f"{hit['computed_for']}).",
            ]
    unchecked = (metrics.get("candidate", {}).get("contamination/overlaps") or {}).get("unchecked")
    if unchecked:
        lines += [
            "",
            "Contamination not checked against " + ", ".join(unchecked) + " (no local data).",
        ]
    replayed = (metrics.get("candidate", {}).get("contamination/overlaps") or {}).get(
        "replayed_rows"
    )
    if replayed:
        lines += [
            "",
            f"Contamination and poisoning also scanned {replayed} replayed rows "
            "(older data a warm start mixed into the training).",
        ]
    win = metrics.get("candidate", {}).get("judge/win_rate")
    if win and win.get("value") is not None:
        lines += [
            "",
            f"Judge win rate vs {win['opponent']}: {win['value']:.3f} "
            f"(95 % CI {win['ci_low']:.3f}-{win['ci_high']:.3f}, {win['samples']} valid, "
            f"{win['parse_failures']} unparseable, {win['inconsistent']} order-inconsistent)",
        ]
    return "\n".join(lines) + "\n"


def _fmt(v: dict[str, Any]) -> str:
    se = v.get("stderr")
    return f"{v['value']:.4f} ± {se:.4f}" if se is not None else f"{v['value']:.4f}"
