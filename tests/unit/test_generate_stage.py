"""The `generate` recipe section, the stage's cache key and reuse rule, the CLI's answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from feinschliff.artifacts import DatasetRef, mark_complete
from feinschliff.cli import app
from feinschliff.cli.app import Failure
from feinschliff.generate.stage import cache_key, request_cache_path, reusable_output
from feinschliff.recipe_loader import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[2]
GENERATE = {
    "seeds": {"topics": "themen.txt", "documents": "docs"},
    "num_instructions": 4,
    "teacher": {
        "kind": "openai",
        "base_url": "http://127.0.0.1:8000/v1",
        "model": "teacher",
        "api_key_env": "TEACHER_API_KEY",
    },
    "preference": {"num_generations": 2},
}


def _recipe(tmp_path: Path, generate: dict | None = None) -> Path:
    data = yaml.safe_load((ROOT / "recipes" / "demo-de.yaml").read_text())
    for src in data["feedback"]["sources"]:
        src["path"] = str((ROOT / "recipes" / src["path"]).resolve())
    data["generate"] = generate or GENERATE
    (tmp_path / "themen.txt").write_text("Tarifwechsel\n", encoding="utf-8")
    (tmp_path / "docs").mkdir(exist_ok=True)
    (tmp_path / "docs" / "a.md").write_text("Der Abschlag.\n", encoding="utf-8")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_section_resolves_seed_paths_relative_to_the_recipe(tmp_path):
    spec = load_recipe(_recipe(tmp_path)).generate
    assert spec is not None
    assert spec.seeds.topics == str(tmp_path / "themen.txt")
    assert spec.seeds.documents == str(tmp_path / "docs")
    assert spec.teacher.kind == "openai" and spec.teacher.api_key_env == "TEACHER_API_KEY"


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (
            {"teacher": {**GENERATE["teacher"], "api_key": "sk-secret"}},
            "generate.teacher.api_key",
        ),
        (
            {"teacher": {**GENERATE["teacher"], "api_key_env": "sk-secret"}},
            "generate.teacher.api_key_env",
        ),
        (
            {"teacher": {**GENERATE["teacher"], "base_url": "127.0.0.1:8000"}},
            "generate.teacher.base_url",
        ),
        ({"preference": {"num_generations": 1}}, "generate.preference.num_generations"),
        ({"filters": {"min_answer_chars": 50, "max_answer_chars": 10}}, "generate.filters"),
    ],
)
def test_invalid_sections_name_the_field(tmp_path, change, path):
    with pytest.raises(RecipeError) as err:
        load_recipe(_recipe(tmp_path, {**GENERATE, **change}))
    assert any(path in line for line in err.value.lines), err.value.lines


def test_cache_key_follows_content_not_operational_knobs(tmp_path):
    spec = load_recipe(_recipe(tmp_path)).generate
    key = cache_key(spec, None)
    faster = spec.model_copy(update={"concurrency": 32, "retries": 9})
    assert cache_key(faster, None) == key
    assert cache_key(spec.model_copy(update={"num_instructions": 5}), None) != key
    fb = DatasetRef(path="/x", sha256="a" * 64)
    assert cache_key(spec, fb) != key
    (tmp_path / "docs" / "a.md").write_text("Der Abschlag, geändert.\n", encoding="utf-8")
    assert cache_key(spec, None) != key


def test_output_stopped_by_budget_is_not_reused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sft.jsonl").write_text("{}\n")
    mark_complete(out, stage="generate", key="k", stopped_by_budget=None)
    assert reusable_output(out, "k") is not None
    assert reusable_output(out, "other") is None
    mark_complete(
        out, stage="generate", key="k", stopped_by_budget="budget: max_requests=1 reached"
    )
    assert reusable_output(out, "k") is None


def test_request_cache_is_per_endpoint_and_model(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path))
    spec = load_recipe(_recipe(tmp_path)).generate
    other = spec.teacher.model_copy(update={"model": "judge"})
    assert request_cache_path(spec.teacher).parent == tmp_path / "cache" / "generate"
    assert request_cache_path(spec.teacher) != request_cache_path(other)


runner = CliRunner()


def test_help_says_what_it_writes():
    result = runner.invoke(app, ["generate", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for needle in ("sft.jsonl", "preference.jsonl", "manifest.json", "distiset", "cached", "--set"):
        assert needle in text, needle


def test_recipe_without_section_exits_2(tmp_path):
    path = _recipe(tmp_path)
    data = yaml.safe_load(path.read_text())
    del data["generate"]
    path.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["generate", str(path), "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, Failure) and result.exception.code == 2
    assert "no `generate` section" in str(result.exception)


def test_reused_output_is_reported_without_running_anything(tmp_path, monkeypatch):
    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    spec = load_recipe(_recipe(tmp_path)).generate
    out = tmp_path / "out"
    out.mkdir()
    manifest = {
        "counts": {"sft.jsonl": 1},
        "teacher_usage": {"requests": 0},
        "stopped_by_budget": None,
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    mark_complete(out, stage="generate", key=cache_key(spec, None), stopped_by_budget=None)
    result = runner.invoke(app, ["generate", str(tmp_path / "recipe.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["counts"] == {"sft.jsonl": 1}
