"""A scheduled evaluate reuses the base model's and the production adapter's lm-eval results
from an earlier run when nothing that can change them changed (``evaluate.baseline_cache``),
and computes them again otherwise.

lm-eval itself is faked at its lowest level (``HFLM`` and ``simple_evaluate``); run_tasks, the
cache and the stage are the real ones. Each fake call gives new numbers, so a report that shows
the first run's numbers was reused and one that shows new numbers was recomputed."""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import sys
import types
from pathlib import Path

import pytest

from feinschliff.artifacts import AdapterRef, mark_complete, prepare_out
from feinschliff.recipe_loader import load_recipe

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")
TASK = "de_wissen_mc"


class FakeLM:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@pytest.fixture
def lm(tmp_path, monkeypatch):
    """FEINSCHLIFF_HOME and the project root (evals/) in tmp_path, a local base model folder,
    and lm-eval faked: returns the list of calls (the adapter each was for)."""
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    shutil.copytree(ROOT / "evals", tmp_path / "project" / "evals")
    monkeypatch.setenv("FEINSCHLIFF_PROJECT_ROOT", str(tmp_path / "project"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(b"weights")
    calls: list[dict] = []
    made = itertools.count(1)

    def simple_evaluate(*, model, tasks, **kwargs):
        calls.append({"adapter": model.kwargs["peft"], "tasks": tasks, **model.kwargs})
        n = next(made)
        value = n / 100  # every computation gives other numbers
        return {
            "results": {t: {"acc,none": value, "acc_stderr,none": 0.01} for t in tasks},
            "n-samples": {t: {"effective": 3} for t in tasks},
            "higher_is_better": {t: {"acc": True} for t in tasks},
            "samples": {t: [{"doc_id": 0, "call": n}] for t in tasks},
        }

    import lm_eval

    hf = types.ModuleType("lm_eval.models.huggingface")
    hf.HFLM = FakeLM  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lm_eval.models.huggingface", hf)
    monkeypatch.setattr(lm_eval, "simple_evaluate", simple_evaluate)
    return calls


def _recipe(tmp_path: Path, *overrides: str):
    return load_recipe(
        DEMO,
        [
            f"base_model.name={tmp_path / 'model'}",
            "base_model.dtype=float32",
            f"evaluate.tasks=[{TASK}]",
            f"register.registry={tmp_path / 'registry'}",
            *overrides,
        ],
    )


def _train_output(path: Path, content: bytes) -> AdapterRef:
    prepare_out(path, "train-key")
    (path / "adapter").mkdir()
    (path / "adapter" / "adapter_config.json").write_text("{}")
    (path / "adapter" / "adapter_model.safetensors").write_bytes(content)
    return AdapterRef(path=str(path), sha256=mark_complete(path, stage="train", key="train-key"))


def _version(path: Path, content: bytes) -> AdapterRef:
    (path / "adapter").mkdir(parents=True)
    (path / "adapter" / "adapter_config.json").write_text("{}")
    (path / "adapter" / "adapter_model.safetensors").write_bytes(content)
    (path / "manifest.json").write_text(json.dumps({"version": path.name}))
    return AdapterRef(path=str(path), sha256=mark_complete(path))


def _evaluate(recipe, candidate, out, production):
    from feinschliff.evaluate import run_evaluate

    return json.loads(
        (
            run_evaluate(recipe, candidate, out, production=production).dir / "report.json"
        ).read_text()
    )


def _roles(calls: list[dict]) -> list[str]:
    return [
        "base" if c["adapter"] is None else "production" if "v0001" in c["adapter"] else "candidate"
        for c in calls
    ]


def _two_runs(tmp_path, lm, *second: str, between=None):
    """Run 1 (candidate A), optionally change something, run 2 (candidate B): the roles
    lm-eval ran for in run 2, and both reports."""
    production = _version(tmp_path / "registry" / "v0001", b"production")
    first = _evaluate(
        _recipe(tmp_path),
        _train_output(tmp_path / "train-a", b"A"),
        tmp_path / "eval-1",
        production,
    )
    assert _roles(lm) == ["base", "production", "candidate"]
    if between:
        between(tmp_path)
    lm.clear()
    report = _evaluate(
        _recipe(tmp_path, *second),
        _train_output(tmp_path / "train-b", b"B"),
        tmp_path / "eval-2",
        production,
    )
    return _roles(lm), first, report


def test_a_second_evaluation_reuses_base_and_production(tmp_path, lm, caplog):
    caplog.set_level(logging.INFO, logger="feinschliff")
    ran, first, second = _two_runs(tmp_path, lm)
    assert ran == ["candidate"]
    for role in ("base", "production"):
        assert second["metrics"][role] == first["metrics"][role]
        name = f"samples/{role}/{TASK}.jsonl"
        assert (tmp_path / "eval-2" / name).read_text() == (tmp_path / "eval-1" / name).read_text()
        [hit] = second["models"][role]["lm_eval_reused"]
        assert hit["entry"] and hit["computed_for"] == str(tmp_path / "eval-1")
        assert hit["tasks"] == [TASK]
        assert first["models"][role]["lm_eval_reused"] is None
    assert second["models"]["candidate"]["lm_eval_reused"] is None
    assert second["metrics"]["candidate"] != first["metrics"]["candidate"]
    md = (tmp_path / "eval-2" / "report.md").read_text()
    assert f"Base: lm-eval results of {TASK} reused from cache entry" in md
    assert f"Production: lm-eval results of {TASK} reused" in md
    assert "base: reusing lm-eval results of cache entry" in caplog.text


def _touch_weights(tmp_path: Path) -> None:
    (tmp_path / "model" / "model.safetensors").write_bytes(b"other weights")


def _edit_task_data(tmp_path: Path) -> None:
    data = tmp_path / "project" / "evals" / "lm_eval_tasks" / f"{TASK}.jsonl"
    data.write_text(data.read_text() + data.read_text().splitlines()[0] + "\n")


def _edit_task_yaml(tmp_path: Path) -> None:
    yml = tmp_path / "project" / "evals" / "lm_eval_tasks" / f"{TASK}.yaml"
    yml.write_text(yml.read_text() + "\n# edited\n")


def _upgrade_lm_eval(tmp_path: Path, monkeypatch) -> None:
    from importlib import metadata

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda n: "9.9" if n == "lm_eval" else real(n))


def _on_a_gpu(tmp_path: Path, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.mark.parametrize(
    ("second", "between"),
    [
        (["evaluate.limit=5"], None),
        (["evaluate.num_fewshot=1"], None),
        (["evaluate.batch_size=4"], None),
        (["base_model.dtype=bfloat16"], None),
        ([], _touch_weights),
        ([], _edit_task_data),
        ([], _edit_task_yaml),
        ([], "versions"),
        ([], "device"),
    ],
    ids=[
        "limit",
        "fewshot",
        "batch",
        "dtype",
        "weights",
        "task-data",
        "task-yaml",
        "lm-eval",
        "gpu",
    ],
)
def test_any_changed_ingredient_recomputes(tmp_path, lm, monkeypatch, second, between):
    if between == "versions":
        between = lambda p: _upgrade_lm_eval(p, monkeypatch)  # noqa: E731
    elif between == "device":
        between = lambda p: _on_a_gpu(p, monkeypatch)  # noqa: E731
    ran, first, report = _two_runs(tmp_path, lm, *second, between=between)
    assert ran == ["base", "production", "candidate"]
    assert report["metrics"]["base"] != first["metrics"]["base"]
    assert all(m["lm_eval_reused"] is None for m in report["models"].values())


def test_another_production_adapter_recomputes_production_only(tmp_path, lm):
    production = _version(tmp_path / "registry" / "v0001", b"production")
    _evaluate(
        _recipe(tmp_path),
        _train_output(tmp_path / "train-a", b"A"),
        tmp_path / "eval-1",
        production,
    )
    (production.dir / "adapter" / "adapter_model.safetensors").write_bytes(b"retrained")
    lm.clear()
    _evaluate(
        _recipe(tmp_path),
        _train_output(tmp_path / "train-b", b"B"),
        tmp_path / "eval-2",
        production,
    )
    assert _roles(lm) == ["production", "candidate"]


@pytest.mark.parametrize("damage", ["metrics", "marker", "samples"])
def test_a_damaged_entry_is_recomputed_with_one_warning(tmp_path, lm, caplog, damage):
    def break_entries(p: Path) -> None:
        for entry in (p / "home" / "cache" / "evaluate").iterdir():
            if damage == "metrics":
                (entry / "metrics.json").write_text('{"de_wissen_mc/acc": {"value": 1.0}}')
            elif damage == "marker":
                (entry / "entry.json").unlink()
            else:
                next((entry / "samples").iterdir()).write_text("{}\n")

    ran, first, report = _two_runs(tmp_path, lm, between=break_entries)
    assert ran == ["base", "production", "candidate"]
    assert report["metrics"]["base"]["de_wissen_mc/acc"]["value"] != 1.0
    assert caplog.text.count("is damaged") == 2  # one per entry (base, production)
    lm.clear()  # the recomputed entries are whole again
    _evaluate(
        _recipe(tmp_path),
        _train_output(tmp_path / "train-c", b"C"),
        tmp_path / "eval-3",
        AdapterRef(path=str(tmp_path / "registry" / "v0001"), sha256="x"),
    )
    assert _roles(lm) == ["candidate"]


def test_switched_off_everything_is_computed(tmp_path, lm):
    ran, _, report = _two_runs(tmp_path, lm, "evaluate.reuse_baselines=false")
    assert ran == ["base", "production", "candidate"]
    assert report["models"]["base"]["lm_eval_reused"] is None


def test_the_candidate_is_never_reused_but_serves_as_production_later(tmp_path, lm):
    candidate = _train_output(tmp_path / "train-a", b"A")
    _evaluate(_recipe(tmp_path), candidate, tmp_path / "eval-1", None)
    lm.clear()
    _evaluate(_recipe(tmp_path), candidate, tmp_path / "eval-2", None)  # same candidate again
    assert [c["adapter"] is None for c in lm] == [False]  # base reused, candidate computed
    # promoted: next run's production holds the same adapter files
    promoted = _version(tmp_path / "registry" / "v0001", b"A")
    lm.clear()
    report = _evaluate(
        _recipe(tmp_path), _train_output(tmp_path / "train-b", b"B"), tmp_path / "eval-3", promoted
    )
    assert _roles(lm) == ["candidate"]
    assert report["models"]["production"]["lm_eval_reused"][0]["role"] == "candidate"


def test_held_out_data_of_the_use_case_task_is_part_of_the_key(tmp_path, lm):
    from feinschliff.evaluate.baseline_cache import lm_eval_key

    recipe = _recipe(tmp_path, "evaluate.tasks=[de_wissen_mc, usecase_heldout]")
    keys = []
    for rows in ("a", "b"):
        data = tmp_path / f"ingest-{rows}"
        (data / "heldout").mkdir(parents=True)
        (data / "heldout" / "preference.jsonl").write_text(json.dumps({"rows": rows}) + "\n")
        keys.append(lm_eval_key(recipe, str(tmp_path / "model"), None, heldout_dir=data))
    assert keys[0] is not None and keys[0] != keys[1]
    plain = _recipe(tmp_path)  # without the use-case task the held-out rows do not matter
    assert lm_eval_key(plain, "m", None, heldout_dir=tmp_path / "ingest-a") == lm_eval_key(
        plain, "m", None, heldout_dir=tmp_path / "ingest-b"
    )


def test_a_hub_model_is_evaluated_at_its_revision_and_keyed_by_its_commit(
    tmp_path, lm, monkeypatch
):
    import feinschliff.evaluate.baseline_cache as cache

    hub = tmp_path / "hub"
    ref = hub / "models--org--model" / "refs" / "v1"
    monkeypatch.setattr(cache, "_hub_cache", lambda: hub)
    recipe = lambda: _recipe(tmp_path, "base_model.name=org/model", "base_model.revision=v1")  # noqa: E731

    def run(n: str) -> list[str]:
        lm.clear()
        _evaluate(
            recipe(),
            _train_output(tmp_path / f"train-{n}", n.encode()),
            tmp_path / f"eval-{n}",
            None,
        )
        assert all(c["revision"] == "v1" and c["pretrained"] == "org/model" for c in lm)
        return ["base" if c["adapter"] is None else "candidate" for c in lm]

    assert run("a") == ["base", "candidate"]
    assert run("b") == ["base", "candidate"]  # commit unknown here: not cached
    ref.parent.mkdir(parents=True)
    ref.write_text("1" * 40)
    assert run("c") == ["base", "candidate"]
    assert run("d") == ["candidate"]
    ref.write_text("2" * 40)  # the tag moved to another commit
    assert run("e") == ["base", "candidate"]


def test_only_the_most_recently_used_entries_are_kept(tmp_path, lm, monkeypatch):
    import feinschliff.evaluate.baseline_cache as cache

    monkeypatch.setattr(cache, "KEEP", 3)
    production = _version(tmp_path / "registry" / "v0001", b"production")
    for n in "abcd":  # base and production reused (used last), one candidate entry each
        _evaluate(
            _recipe(tmp_path),
            _train_output(tmp_path / f"train-{n}", n.encode()),
            tmp_path / f"eval-{n}",
            production,
        )
    entries = [json.loads((e / "entry.json").read_text()) for e in cache.cache_root().iterdir()]
    assert sorted((e["role"], e["computed_for"][-6:]) for e in entries) == [
        ("base", "eval-a"),
        ("candidate", "eval-d"),
        ("production", "eval-a"),
    ]
