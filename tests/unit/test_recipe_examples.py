"""The example recipes in recipes/examples/: valid, distinct, covering the common setups, and
their headers name the file they are in (so a renamed file cannot keep stale run commands)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from feinschliff.cli import app
from feinschliff.estimate import EstimateError, check_training_fits
from feinschliff.recipe import Recipe
from feinschliff.recipe_loader import load_recipe

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = ROOT / "recipes" / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))
SHIPPED = sorted((ROOT / "recipes").glob("*.yaml"))
SCHEMA_LINE = "# yaml-language-server: $schema=../recipe.schema.json"


def _load(path: Path) -> Recipe:
    return load_recipe(path)


def _pulls(recipe: Recipe) -> bool:
    return any(src.pull is not None for src in recipe.feedback.sources)


def _header(path: Path) -> list[str]:
    """The leading comment block (up to the first YAML key)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {
        "support-de-dpo.yaml",
        "support-de-orpo.yaml",
        "support-de-kto.yaml",
        "support-de-live.yaml",
        "support-de-synthetic.yaml",
        "support-de-axolotl-qlora.yaml",
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_and_points_at_the_schema(path: Path):
    recipe = _load(path)
    assert isinstance(recipe, Recipe)
    assert path.read_text(encoding="utf-8").splitlines()[0] == SCHEMA_LINE
    # relative paths are relative to the recipe file: they must land in the checkout's data/
    for src in recipe.feedback.sources:
        if src.path is not None:
            assert Path(src.path).is_relative_to(ROOT / "data"), src.path


def test_use_cases_are_distinct_from_each_other_and_the_shipped_recipes():
    examples = [_load(p).use_case for p in EXAMPLES]
    shipped = {_load(p).use_case for p in SHIPPED}
    assert len(set(examples)) == len(examples), examples
    assert not set(examples) & shipped, set(examples) & shipped


def test_examples_cover_the_common_setups():
    recipes = {p.name: _load(p) for p in EXAMPLES}
    methods = {r.train.method for r in recipes.values()}
    assert {"dpo", "orpo", "kto"} <= methods, methods
    assert any(r.train.backend == "axolotl" for r in recipes.values())
    assert any(r.train.backend == "axolotl" and r.train.qlora for r in recipes.values())
    assert any(r.generate is not None and r.generate.preference for r in recipes.values())
    live = [r for r in recipes.values() if _pulls(r)]
    assert live, "no example pulls from a live server"
    kinds = {src.kind for r in live for src in r.feedback.sources if src.pull is not None}
    assert kinds == {"argilla", "langfuse"}, kinds
    assert all(src.path is None for r in live for src in r.feedback.sources if src.pull)
    served = [r for r in recipes.values() if r.register.vllm is not None]
    assert any(len(r.register.vllm.servers) >= 2 for r in served), "no multi-replica vLLM"
    assert any(rule.rule == "require_approval" for r in recipes.values() for rule in r.gate.rules)


def test_preference_examples_gate_on_heldout_preference_accuracy():
    for path in EXAMPLES:
        recipe = _load(path)
        if recipe.train.method in ("dpo", "orpo", "kto"):
            metrics = {getattr(rule, "metric", None) for rule in recipe.gate.rules}
            assert "heldout/preference_accuracy" in metrics, path.name


def test_live_example_keeps_secrets_out_and_names_them():
    (path,) = [p for p in EXAMPLES if _pulls(_load(p))]
    recipe, text = _load(path), path.read_text(encoding="utf-8")
    assert recipe.feedback.pii.mode == "pseudonymize"
    assert recipe.schedule is not None
    assert recipe.register.vllm is not None and recipe.register.vllm.keep_versions >= 2
    assert all(s.api_key_env for s in recipe.register.vllm.servers)
    # the names the code reads (ingest/pull.py, pull_argilla.py, pii.load_key) are documented
    header = "\n".join(_header(path))
    for name in (
        "ARGILLA_API_KEY",
        "LANGFUSE_PUBLIC_KEY",
        "LANGFUSE_SECRET_KEY",
        recipe.feedback.pii.key_secret,
        recipe.register.vllm.servers[0].api_key_env,
    ):
        assert name in header, name
    assert not re.search(r"(?i)\b(api_key|secret_key|password|token)\s*:", text)
    assert not re.search(r"\b(sk|pk)-lf-[0-9a-f-]{8,}", text)  # Langfuse key shapes


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_passes_validate_on_the_cli(path: Path):
    # examples that read only local files must find them all here (--strict); a live one has
    # nothing local to find, and plain validate must pass
    strict = [] if _pulls(_load(path)) else ["--strict"]
    result = CliRunner().invoke(app, ["validate", *strict, str(path)])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output, result.output


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_estimates(path: Path):
    result = CliRunner().invoke(app, ["estimate", str(path)])
    assert result.exit_code == 0, result.output
    assert "= training" in result.output


def test_axolotl_example_train_gpu_refuses_what_does_not_fit():
    (path,) = [p for p in EXAMPLES if _load(p).train.backend == "axolotl"]
    recipe = _load(path)
    assert recipe.train.gpu is not None
    assert check_training_fits(recipe) is not None  # as written it fits the named card
    too_big = load_recipe(path, ["train.hyperparameters.batch_size=8"])
    with pytest.raises(EstimateError, match=f"train.gpu={recipe.train.gpu}"):
        check_training_fits(too_big)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_header_names_its_own_file_in_a_run_command(path: Path):
    header = _header(path)
    own = f"recipes/examples/{path.name}"
    commands = [line for line in header if re.match(r"#\s+feinschliff \w+", line)]
    assert any(own in line for line in commands), f"{path.name}: no `feinschliff ...` {own} line"
    # and no command line names another example (a copy-paste leftover)
    for line in commands:
        for other in re.findall(r"recipes/examples/([\w.-]+\.yaml)", line):
            assert other == path.name, line


def test_readme_lists_every_example():
    readme = (EXAMPLES_DIR / "README.md").read_text(encoding="utf-8")
    for path in EXAMPLES:
        assert f"`{path.name}`" in readme, path.name
        assert f"recipes/examples/{path.name}" in readme, path.name
