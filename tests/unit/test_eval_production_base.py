"""After the recipe's base model is changed, the production adapter (trained on the old base)
is no baseline: evaluate leaves it out, says why, and the gate compares with the base model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feinschliff.artifacts import AdapterRef, mark_complete, prepare_out
from feinschliff.gate import decide_promotion
from feinschliff.recipe import GateSpec
from feinschliff.recipe_loader import load_recipe

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo-de.yaml")


def _train_output(path: Path) -> AdapterRef:
    prepare_out(path, "train-key")
    (path / "adapter").mkdir()
    (path / "adapter" / "adapter_config.json").write_text("{}")
    (path / "adapter" / "adapter_model.safetensors").write_bytes(b"candidate")
    return AdapterRef(path=str(path), sha256=mark_complete(path, stage="train", key="train-key"))


def _version(path: Path, base_name: str) -> AdapterRef:
    """A registered version folder as the registry writes it (adapter/, manifest.json)."""
    (path / "adapter").mkdir(parents=True)
    (path / "adapter" / "adapter_config.json").write_text("{}")
    (path / "adapter" / "adapter_model.safetensors").write_bytes(b"production")
    manifest = {"version": path.name, "base_model": {"name": base_name, "revision": None}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return AdapterRef(path=str(path), sha256=mark_complete(path))


@pytest.fixture
def evaluated(monkeypatch):
    """run_evaluate without models: records which adapters lm-eval was asked to run."""
    import feinschliff.evaluate.stage as stage

    seen: list[str | None] = []

    def run_tasks(model_path, tasks, *, adapter, **kw):
        seen.append(adapter)
        # production would have scored higher than the candidate; base lower
        value = {None: 0.40}.get(adapter, 0.90 if adapter and "v0001" in adapter else 0.50)
        return {"de_wissen_mc/acc_norm": {"value": value, "stderr": None, "samples": 60}}

    monkeypatch.setattr(stage, "resolve_model", lambda name: "/nonexistent/model")
    monkeypatch.setattr(stage, "run_tasks", run_tasks)
    return seen


def test_production_on_another_base_model_is_not_evaluated(tmp_path, evaluated):
    from feinschliff.evaluate import run_evaluate

    recipe = load_recipe(DEMO)
    production = _version(tmp_path / "registry" / "v0001", "meta-llama/Llama-3.1-8B-Instruct")
    ref = run_evaluate(
        recipe, _train_output(tmp_path / "train"), tmp_path / "eval", production=production
    )
    assert not any(a and "v0001" in a for a in evaluated)  # its adapter was never loaded
    report = json.loads((ref.dir / "report.json").read_text())
    assert "production" not in report["models"] and "production" not in report["metrics"]
    assert "Llama-3.1-8B-Instruct" in report["skipped"]["production"]
    assert "Production not evaluated" in (ref.dir / "report.md").read_text()

    rule = {"rule": "no_regression", "metric": "de_wissen_mc/acc_norm", "tolerance": 0.0}
    decision = decide_promotion(report, GateSpec.model_validate({"rules": [rule]}))
    assert decision.promote  # better than base, the only comparable baseline
    assert "vs base" in decision.results[0].detail
    assert "production not evaluated" in decision.results[0].detail


def test_production_on_the_same_base_model_is_still_evaluated(tmp_path, evaluated):
    from feinschliff.evaluate import run_evaluate

    recipe = load_recipe(DEMO)
    production = _version(tmp_path / "registry" / "v0001", recipe.base_model.name)
    ref = run_evaluate(
        recipe, _train_output(tmp_path / "train"), tmp_path / "eval", production=production
    )
    assert any(a and "v0001" in a for a in evaluated)
    report = json.loads((ref.dir / "report.json").read_text())
    assert report["models"]["production"]["adapter_sha256"] == production.sha256
    assert report["skipped"] == {}
    rule = {"rule": "no_regression", "metric": "de_wissen_mc/acc_norm", "tolerance": 0.0}
    assert not decide_promotion(report, GateSpec.model_validate({"rules": [rule]})).promote


def test_a_candidate_that_is_production_is_compared_with_base(tmp_path, evaluated):
    # `feinschliff evaluate` of the adapter that is production already (the flow leaves such a
    # production out): compared with itself, no_regression passed whatever the adapter does
    from feinschliff.evaluate import run_evaluate

    recipe = load_recipe(DEMO)
    candidate = _train_output(tmp_path / "train")
    version = tmp_path / "registry" / "v0001"
    version.mkdir(parents=True)
    (version / "adapter").mkdir()
    for f in (candidate.dir / "adapter").iterdir():
        (version / "adapter" / f.name).write_bytes(f.read_bytes())
    (version / "manifest.json").write_text(json.dumps({"version": "v0001"}))
    production = AdapterRef(path=str(version), sha256=mark_complete(version))
    ref = run_evaluate(recipe, candidate, tmp_path / "eval", production=production)
    assert not any(a and "v0001" in a for a in evaluated)
    report = json.loads((ref.dir / "report.json").read_text())
    assert report["skipped"] == {"production": "production is the candidate"}
    assert "production" not in report["models"]
