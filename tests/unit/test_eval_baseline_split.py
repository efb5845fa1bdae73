"""``usecase_heldout`` is evaluated in an lm-eval call (and baseline cache entry) of its own: its
held-out rows are new in every scheduled run with new feedback, and keying the whole task list
with them recomputed the expensive static tasks for base and production every time.

lm-eval is faked as in test_eval_baseline_cache (each call gives new numbers)."""

from __future__ import annotations

import json
from pathlib import Path

from feinschliff.artifacts import DatasetRef, mark_complete
from tests.unit import test_eval_baseline_cache as cached
from tests.unit.test_eval_baseline_cache import TASK, _recipe, _roles, _train_output, _version

lm = cached.lm  # the fixture: FEINSCHLIFF_HOME in tmp_path, lm-eval faked, its calls

USECASE = "usecase_heldout"
BOTH = f"evaluate.tasks=[{TASK}, {USECASE}]"


def _ingest(path: Path, answer: str) -> DatasetRef:
    """An ingest output whose held-out split holds one preference pair."""
    (path / "heldout").mkdir(parents=True)
    (path / "sft.jsonl").write_text("")
    pair = {
        "prompt": [{"role": "user", "content": "Wie kündige ich meinen Vertrag?"}],
        "chosen": [{"role": "assistant", "content": answer}],
        "rejected": [{"role": "assistant", "content": "Keine Ahnung."}],
    }
    (path / "heldout" / "preference.jsonl").write_text(json.dumps(pair) + "\n")
    return DatasetRef(path=str(path), sha256=mark_complete(path))


def _evaluate(tmp_path: Path, name: str, data: DatasetRef, production, *overrides: str) -> dict:
    from feinschliff.evaluate import run_evaluate

    recipe = _recipe(tmp_path, "evaluate.heldout=false", *overrides)
    candidate = _train_output(tmp_path / f"train-{name}", name.encode())
    out = run_evaluate(
        recipe, candidate, tmp_path / f"eval-{name}", production=production, data=data
    )
    return json.loads((out.dir / "report.json").read_text())


def _calls(calls: list[dict]) -> list[tuple[str, list[str]]]:
    return list(zip(_roles(calls), [c["tasks"] for c in calls], strict=True))


def test_new_feedback_recomputes_the_use_case_task_only(tmp_path, lm):
    production = _version(tmp_path / "registry" / "v0001", b"production")
    first = _evaluate(
        tmp_path, "a", _ingest(tmp_path / "ingest-a", "Online kündigen."), production, BOTH
    )
    # every model: the static tasks in one call, the use-case task in another
    assert sorted(_calls(lm)) == sorted(
        (role, tasks)
        for role in ("base", "production", "candidate")
        for tasks in ([TASK], [USECASE])
    )
    lm.clear()
    new = _ingest(tmp_path / "ingest-b", "Im Kundenportal unter Vertrag.")  # new feedback
    second = _evaluate(tmp_path, "b", new, production, BOTH)
    assert sorted(_calls(lm)) == [
        ("base", [USECASE]),
        ("candidate", [TASK]),
        ("candidate", [USECASE]),
        ("production", [USECASE]),
    ]
    for role in ("base", "production"):
        static, usecase = f"{TASK}/acc", f"{USECASE}/acc"
        assert second["metrics"][role][static] == first["metrics"][role][static]  # reused
        assert second["metrics"][role][usecase] != first["metrics"][role][usecase]  # recomputed
        samples = tmp_path / "eval-b" / "samples" / role
        old = tmp_path / "eval-a" / "samples" / role
        assert (samples / f"{TASK}.jsonl").read_text() == (old / f"{TASK}.jsonl").read_text()
        assert (samples / f"{USECASE}.jsonl").read_text() != (old / f"{USECASE}.jsonl").read_text()
        assert sorted(p.name for p in samples.iterdir()) == [f"{TASK}.jsonl", f"{USECASE}.jsonl"]
        [hit] = second["models"][role]["lm_eval_reused"]
        assert hit["tasks"] == [TASK] and hit["computed_for"] == str(tmp_path / "eval-a")
        assert first["models"][role]["lm_eval_reused"] is None
    assert second["models"]["candidate"]["lm_eval_reused"] is None
    assert sorted(p.name for p in (tmp_path / "eval-b" / "samples").iterdir()) == [
        "base",
        "candidate",
        "production",
    ]  # no call's own folder left behind
    md = (tmp_path / "eval-b" / "report.md").read_text()
    assert f"Base: lm-eval results of {TASK} reused from cache entry" in md
    assert f"| {USECASE}/acc |" in md and f"| {TASK}/acc |" in md


def test_the_same_held_out_data_reuses_both_entries(tmp_path, lm):
    data = _ingest(tmp_path / "ingest-a", "Online kündigen.")
    _evaluate(tmp_path, "a", data, None, BOTH)
    lm.clear()
    report = _evaluate(tmp_path, "b", data, None, BOTH)  # another candidate on the same data
    assert _roles(lm) == ["candidate", "candidate"]
    from feinschliff.evaluate.baseline_cache import cache_root

    for entry in cache_root().iterdir():  # each entry holds its own call's samples only
        tasks = json.loads((entry / "key.json").read_text())["tasks"]
        assert sorted(p.name for p in (entry / "samples").iterdir()) == [
            f"{t}.jsonl" for t in tasks
        ]
    hits = report["models"]["base"]["lm_eval_reused"]
    assert sorted(h["tasks"] for h in hits) == [[TASK], [USECASE]]
    assert (
        "Base: lm-eval results of usecase_heldout reused"
        in (tmp_path / "eval-b" / "report.md").read_text()
    )


def test_only_the_use_case_task_is_one_call_keyed_with_the_held_out_rows(tmp_path, lm):
    only = (f"evaluate.tasks=[{USECASE}]", "gate.rules=[{rule: poisoning}]")
    _evaluate(tmp_path, "a", _ingest(tmp_path / "ingest-a", "Online kündigen."), None, *only)
    assert _calls(lm) == [("base", [USECASE]), ("candidate", [USECASE])]
    lm.clear()
    _evaluate(tmp_path, "b", _ingest(tmp_path / "ingest-b", "Im Portal."), None, *only)
    assert _calls(lm) == [("base", [USECASE]), ("candidate", [USECASE])]


def test_the_use_case_task_runs_first():
    """A missing held-out split fails before any model has run the other tasks (minutes to
    hours on a large model with upstream tasks)."""
    from feinschliff.evaluate.harness import lm_eval_calls

    assert lm_eval_calls(["de_wissen_mc", "usecase_heldout", "arc_de"]) == [
        ["usecase_heldout"],
        ["de_wissen_mc", "arc_de"],
    ]
    assert lm_eval_calls(["de_wissen_mc"]) == [["de_wissen_mc"]]
