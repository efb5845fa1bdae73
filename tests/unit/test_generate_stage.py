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
from feinschliff.generate import stage
from feinschliff.generate.stage import (
    GenerateError,
    cache_key,
    eval_set_names,
    request_cache_path,
    reusable_output,
    run_generate,
)
from feinschliff.recipe_loader import RecipeError, load_recipe
from feinschliff.specs.generate import OpenAITeacher, PreferenceSpec, SamplingSpec

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


def test_mixing_into_the_generate_output_itself_is_refused(tmp_path):
    """`--mixed-out` equal to `--out`: the mix stage would wipe the generated rows (a stage
    folder with another key) before reading them."""
    (tmp_path / "fb").mkdir()
    out = tmp_path / "o"
    args = ["generate", str(_recipe(tmp_path)), "--out", str(out), "--feedback"]
    result = runner.invoke(app, [*args, str(tmp_path / "fb"), "--mixed-out", str(out)])
    assert isinstance(result.exception, Failure) and result.exception.code == 2
    assert "--mixed-out must differ from --out" in str(result.exception)
    assert not out.exists()  # refused before anything ran


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
    recipe = load_recipe(_recipe(tmp_path))
    spec = recipe.generate
    out = tmp_path / "out"
    out.mkdir()
    manifest = {
        "counts": {"sft.jsonl": 1},
        "teacher_usage": {"requests": 0},
        "stopped_by_budget": None,
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    key = cache_key(spec, None, eval_sets=eval_set_names(recipe))
    mark_complete(out, stage="generate", key=key, stopped_by_budget=None)
    result = runner.invoke(app, ["generate", str(tmp_path / "recipe.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["counts"] == {"sft.jsonl": 1}


def test_preference_with_greedy_sampling_is_refused(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(_recipe(tmp_path, {**GENERATE, "sampling": {"temperature": 0}}))
    [line] = err.value.lines
    assert ": generate.sampling.temperature: 0 is greedy decoding" in line  # the field's path
    assert "`preference`" in line and "(from" not in line
    no_pairs = {k: v for k, v in GENERATE.items() if k != "preference"}
    assert load_recipe(_recipe(tmp_path, {**no_pairs, "sampling": {"temperature": 0}}))


@pytest.mark.parametrize(
    "teacher",
    [
        {**GENERATE["teacher"], "structured_output": "off"},
        {**GENERATE["teacher"], "structured_output": "response_format"},
        {"kind": "transformers", "model": "local/teacher"},
    ],
)
def test_answer_max_chars_without_length_constrained_output_is_refused(tmp_path, teacher):
    """The limit is only enforced through vLLM's structured output (a regex); it used to be
    ignored. OpenAI's strict json_schema (`response_format`) refuses string lengths, so there it
    would be ignored too."""
    spec = {**GENERATE, "teacher": teacher, "sampling": {"answer_max_chars": 300}}
    with pytest.raises(RecipeError) as err:
        load_recipe(_recipe(tmp_path, spec))
    [line] = err.value.lines
    assert ": generate.sampling.answer_max_chars: needs structured output" in line
    assert "structured_output: vllm" in line
    vllm = {**GENERATE["teacher"], "structured_output": "vllm"}
    constrained = {**GENERATE, "teacher": vllm, "sampling": {"answer_max_chars": 300}}
    assert load_recipe(_recipe(tmp_path, constrained)).generate.sampling.answer_max_chars == 300


def test_descriptions_say_tgi_ignores_n_and_response_format_has_no_string_lengths():
    kind = OpenAITeacher.model_fields["kind"].description
    assert "TGI" in kind and "`n`" in kind and "vLLM or OpenAI" in kind
    assert "not TGI" in PreferenceSpec.model_fields["num_generations"].description
    assert "no string lengths" in SamplingSpec.model_fields["answer_max_chars"].description


def test_a_lone_leaf_saved_as_default_is_read_under_its_own_name(tmp_path, monkeypatch):
    """distilabel names the only subset "default": when no question survived, only
    instructions_raw had rows, and its drops went uncounted while the error pointed at them.

    The distilabel child process is replaced by one that saves a real Distiset (distilabel's
    own create_distiset) in exactly that shape: a real teacher cannot be made on demand to
    write only questions that all fail the length filter. The real child against a real vLLM
    teacher: tests/integration/test_generate_vllm.py::test_generate_writes_sft_and_preference_rows
    (the "default"-subset case is checked only here)."""
    from datasets import Dataset
    from distilabel.distiset import create_distiset

    monkeypatch.setenv("TEACHER_API_KEY", "sk-test")  # checked before the (replaced) child

    def child(spec, out, plan, teacher, judge):
        steps = tmp_path / "buffer" / "steps_outputs"
        (steps / "instructions_raw").mkdir(parents=True)
        (steps / "answers").mkdir()  # a leaf that wrote nothing
        rows = [{"seed_id": "s0", "instructions": ["kurz", "kurz?"]}]
        Dataset.from_list(rows).to_parquet(steps / "instructions_raw" / "00001.parquet")
        create_distiset(tmp_path / "buffer").save_to_disk(
            out / "distiset", save_card=False, save_pipeline_config=False, save_pipeline_log=False
        )
        status = {k: 0 for k in ("requests", "tokens", "cache_hits", "rejected", "refused")}
        return {**status, "truncated": 0, "budget_exhausted": None}

    monkeypatch.setenv("FEINSCHLIFF_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(stage, "_run_child", child)
    no_pairs = {k: v for k, v in GENERATE.items() if k != "preference"}
    spec = {**no_pairs, "seeds": {"topics": "themen.txt", "pii": "off"}}
    spec["filters"] = {"decontaminate": False}
    recipe = load_recipe(_recipe(tmp_path, spec))
    out = tmp_path / "out"
    with pytest.raises(GenerateError, match="no rows survived"):
        run_generate(recipe, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["drops"]["instructions"] == {"instruction_too_short": 2}


def test_seed_description_says_how_request_seeds_are_made():
    text = SamplingSpec.model_fields["seed"].description
    assert "hash of its messages" in text and "index" not in text


def test_missing_local_teacher_folder_is_a_clear_error_not_a_traceback(tmp_path):
    local = {**GENERATE, "teacher": {"kind": "transformers", "model": str(tmp_path / "nope")}}
    result = runner.invoke(
        app, ["generate", str(_recipe(tmp_path, local)), "--out", str(tmp_path / "o")]
    )
    assert isinstance(result.exception, Failure) and result.exception.code == 1
    assert str(result.exception) == (
        f"generate.teacher.model: model path {tmp_path / 'nope'} does not exist"
    )
    assert not (tmp_path / "o").exists()  # refused before the seeds were read


LEAKED = " ".join(f"privat{i}" for i in range(20))  # a 20-word item of a private eval set


def test_generated_rows_are_decontaminated_against_the_recipes_own_eval_sets(tmp_path, monkeypatch):
    monkeypatch.setenv("TEACHER_API_KEY", "sk-test")  # checked before the (replaced) child
    private = tmp_path / "private_eval.jsonl"
    private.write_text(json.dumps({"question": LEAKED}) + "\n", encoding="utf-8")
    path = _recipe(tmp_path, {**GENERATE, "seeds": {"topics": "themen.txt", "pii": "off"}})
    data = yaml.safe_load(path.read_text())
    data["feedback"].setdefault("decontamination", {})["eval_sets"] = [str(private)]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    recipe = load_recipe(path)
    tasks = [t for t in recipe.evaluate.tasks if t != "usecase_heldout"]  # ingest's own split
    assert eval_set_names(recipe) == [*tasks, str(private)]

    answer = "Gerne helfe ich Ihnen, das geht im Kundenportal unter Verträge."
    rows = [
        ("Wie melde ich den Zählerstand im Kundenportal?", answer),
        ("Was bedeutet das bitte genau: " + LEAKED + "?", answer),  # quotes the eval item
    ]
    leaves = {
        "instructions_raw": [{"seed_id": "s", "instructions": [q for q, _ in rows]}],
        "preferences": [
            {
                "seed_id": "s",
                "instruction": q,
                "generations": [a, a + " Danke."],
                "ratings": [5, 1],
                "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                "rejected": [
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": a + " Danke."},
                ],
                "chosen_rating": 5,
                "rejected_rating": 1,
            }
            for q, a in rows
        ],
    }
    # the distilabel child process and the saved Distiset stand in as their results: a real
    # teacher cannot be made to quote the private eval item on demand. The real child and
    # Distiset against a real vLLM teacher (filters included, on what it wrote):
    # tests/integration/test_generate_vllm.py::test_generate_writes_sft_and_preference_rows
    status = {k: 0 for k in ("requests", "tokens", "cache_hits", "rejected", "refused")}
    monkeypatch.setattr(
        stage, "_run_child", lambda *a: {**status, "truncated": 0, "budget_exhausted": None}
    )
    monkeypatch.setattr(stage, "_load_leaves", lambda p: leaves)
    out = tmp_path / "out"
    run_generate(recipe, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["drops"]["sft"] == {"eval_contamination": 1}
    assert manifest["drops"]["preference"] == {"eval_contamination": 1}
    assert str(private) in manifest["decontamination"]["eval_sets"]

    key = cache_key(recipe.generate, None, eval_sets=eval_set_names(recipe))
    private.write_text(json.dumps({"question": LEAKED + " neu"}) + "\n", encoding="utf-8")
    assert cache_key(recipe.generate, None, eval_sets=eval_set_names(recipe)) != key
    private.unlink()  # decontamination against it would be off: refused, as ingest does
    with pytest.raises(GenerateError, match="private_eval.jsonl does not exist"):
        run_generate(recipe, tmp_path / "out2")
