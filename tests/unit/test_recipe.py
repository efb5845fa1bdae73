"""Recipe validation: shipped recipes, precise error paths, overrides, schema freshness."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from feinschliff.recipe import Recipe
from feinschliff.recipe_loader import RecipeError, apply_override, load_recipe, recipe_json_schema

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


@pytest.fixture()
def demo() -> dict:
    return yaml.safe_load((ROOT / "recipes" / "demo-de.yaml").read_text())


def test_there_are_the_two_shipped_recipes():
    assert {p.name for p in RECIPES} >= {"demo-de.yaml", "support-de-8b.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_validate_and_point_at_the_schema(path: Path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert (
        path.read_text().splitlines()[0] == "# yaml-language-server: $schema=./recipe.schema.json"
    )
    for src in recipe.feedback.sources:
        assert Path(src.path).is_absolute() and Path(src.path).exists(), src.path


def test_committed_schema_is_fresh():
    committed = json.loads((ROOT / "recipes" / "recipe.schema.json").read_text())
    assert committed == recipe_json_schema(), "run `make schema`"


def test_every_field_has_a_description():
    schema = recipe_json_schema()
    missing = []
    for name, model in schema["$defs"].items():
        for field, spec in model.get("properties", {}).items():
            if not spec.get("description"):
                missing.append(f"{name}.{field}")
    for field, spec in schema["properties"].items():
        if not spec.get("description"):
            missing.append(f"Recipe.{field}")
    assert not missing


def test_unknown_key_is_named_by_dotted_path(tmp_path, demo):
    demo["train"]["hyperparameters"]["learnig_rate"] = 1e-4
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, demo))
    assert len(err.value.lines) == 1
    line = err.value.lines[0]
    assert line.startswith(
        f"{tmp_path / 'r.yaml'}: train.hyperparameters.learnig_rate: unknown key"
    )


def test_wrong_type_is_named_by_dotted_path_with_line(tmp_path, demo):
    demo["train"]["lora"]["alpha"] = "viel"
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, demo))
    (line,) = err.value.lines
    assert ": train.lora.alpha: " in line and "'viel'" in line and "(line " in line


def test_all_errors_are_reported_at_once(tmp_path, demo):
    demo["use_case"] = "Bad Name"
    demo["gate"]["rules"][0]["tolerance"] = -1
    demo["feedback"]["heldout_fraction"] = 2
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, demo))
    paths = {line.split(": ")[1] for line in err.value.lines}
    assert paths == {"use_case", "gate.rules.0.tolerance", "feedback.heldout_fraction"}


def test_method_discriminator_forbids_foreign_fields(tmp_path, demo):
    demo["train"]["beta"] = 0.1  # a DPO/ORPO field in an SFT recipe
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, demo))
    assert ": train.beta: unknown key" in err.value.lines[0]
    demo["train"]["method"] = "dpo"
    assert load_recipe(_write(tmp_path, demo)).train.beta == 0.1


def test_unknown_method_names_the_discriminator(tmp_path, demo):
    demo["train"]["method"] = "ppo"
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, demo))
    assert ": train.method: " in err.value.lines[0] and "'sft'" in err.value.lines[0]


@pytest.mark.parametrize("rank", [0, 1000])
def test_unservable_lora_rank_is_refused(tmp_path, demo, rank):
    demo["train"]["lora"]["r"] = rank
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, demo))
    assert ": train.lora.r: " in err.value.lines[0]


def test_a_rank_below_the_servers_max_need_not_be_one_of_vllms_values(tmp_path, demo):
    """vLLM pads lower ranks; only its --max-lora-rank must be one of its values."""
    demo["train"]["lora"]["r"] = 12
    assert load_recipe(_write(tmp_path, demo)).train.lora.r == 12


def test_rank_above_serving_max_is_refused(tmp_path, demo):
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, demo), ["train.lora.r=64"])
    assert "exceeds register.max_lora_rank=16" in err.value.lines[0]
    assert load_recipe(_write(tmp_path, demo), ["train.lora.r=64", "register.max_lora_rank=64"])


def test_overrides_are_validated_like_the_file(tmp_path, demo):
    path = _write(tmp_path, demo)
    recipe = load_recipe(
        path, ["train.hyperparameters.max_steps=3", "evaluate.tasks=[a, de_wissen_mc]"]
    )
    assert recipe.train.hyperparameters.max_steps == 3
    assert recipe.evaluate.tasks == ["a", "de_wissen_mc"]
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ["train.hyperparameters.max_steps=drei"])
    assert ": train.hyperparameters.max_steps: " in err.value.lines[0]
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ["train.nonsense=1"])
    assert ": train.nonsense: unknown key" in err.value.lines[0]
    with pytest.raises(RecipeError) as err:  # bad YAML in the value: a line, not a traceback
        load_recipe(path, ["train.lora.r=["])
    assert len(err.value.lines) == 1
    assert err.value.lines[0].startswith(f"{path}: --set train.lora.r=[: invalid YAML value: ")


def test_override_syntax_errors_are_reported():
    with pytest.raises(ValueError):
        apply_override({}, "no-equals-sign")
    data: dict = {"gate": {"rules": [{"rule": "min"}]}}
    apply_override(data, "gate.rules.0.threshold=0.5")
    assert data["gate"]["rules"][0]["threshold"] == 0.5
    with pytest.raises(ValueError):
        apply_override({"a": 1}, "a.b=2")
    apply_override(data, "gate.rules.1={rule: max}")  # index == length appends
    assert data["gate"]["rules"][1] == {"rule": "max"}
    with pytest.raises(ValueError):
        apply_override(data, "gate.rules.5={rule: max}")


def test_defaults_live_in_the_model(tmp_path, demo):
    del demo["train"]["hyperparameters"]
    recipe = load_recipe(_write(tmp_path, demo))
    assert recipe.train.hyperparameters.learning_rate == 2e-4
    assert recipe.feedback.max_quarantine_fraction == 0.05


def test_bad_cron_and_yaml_errors(tmp_path, demo):
    demo["schedule"]["cron"] = "every night"
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, demo))
    assert ": schedule.cron: " in err.value.lines[0] and "5 fields" in err.value.lines[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text("use_case: [unclosed\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(bad)
    assert err.value.lines[0].startswith(f"{bad}: (yaml): ")


CRONS = [
    *["0 2 * * 1", "*/15 * * * mon-fri", "0 0 1 jan,jul *", "1,2,3 0-23/2 */2 * SUN"],
    *["0 0 L * *", "0 0 * * 5#3", "0 0 * * 7", "5-1 * * * *", "@daily", "0 0 1-31 * *"],
    *["a b c d e", "60 * * * *", "0 2 * * 8", "*/0 * * * *", "0 0 * * 5#9", "0 0 32 * *"],
    *["0 0 0 * *", "0 0 * 13 *", "0 24 * * *", "x", "0 2 * *", "@sometimes"],
    *["0 2 * * mon#", "0 2 * * 5#12", "0 2 * * 5#34", "0 2 ? * *", "0 2 1-L * *", "0 2 * * ?"],
]


@pytest.mark.parametrize("cron", CRONS)
def test_cron_is_accepted_exactly_when_prefect_accepts_it(cron):
    """A cron that Prefect refuses used to validate and then crash `deployments sync` with a
    traceback; the recipe now refuses it (and takes every one Prefect takes)."""
    from prefect._internal.schemas.validators import validate_cron_string

    from feinschliff.specs.register import ScheduleSpec

    try:
        validate_cron_string(cron)
        prefect_ok = True
    except ValueError:
        prefect_ok = False
    try:
        ScheduleSpec(cron=cron)
        ours = True
    except ValueError:
        ours = False
    assert ours == prefect_ok


def test_unknown_timezone_is_refused_with_its_path(tmp_path, demo):
    demo["schedule"]["timezone"] = "Europe/Berln"
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, demo))
    assert ": schedule.timezone: " in err.value.lines[0] and "Europe/Berln" in err.value.lines[0]


def test_validate_cli_exit_codes(tmp_path, demo):
    good = ROOT / "recipes" / "demo-de.yaml"
    demo["train"]["lora"]["rank"] = 8
    bad = _write(tmp_path, demo)
    cli = [sys.executable, "-m", "feinschliff.cli", "validate"]
    ok = subprocess.run([*cli, str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    fail = subprocess.run([*cli, str(good), str(bad)], capture_output=True, text=True)
    assert fail.returncode == 2
    assert f"{bad}: train.lora.rank: unknown key" in fail.stderr


def test_code_version_changes_with_the_source(tmp_path, monkeypatch):
    """Cache keys carry a hash of the package source: edited code never reuses old results."""
    import feinschliff.artifacts as artifacts

    first = artifacts.code_version()
    assert first.startswith("0.") and "+" in first
    artifacts.code_version.cache_clear()
    pkg = tmp_path / "feinschliff"
    pkg.mkdir()
    (pkg / "artifacts.py").write_text("x = 1\n")
    monkeypatch.setattr(artifacts, "__file__", str(pkg / "artifacts.py"))
    a = artifacts.code_version()
    artifacts.code_version.cache_clear()
    (pkg / "artifacts.py").write_text("x = 2\n")
    b = artifacts.code_version()
    artifacts.code_version.cache_clear()
    assert a != b


def test_code_version_changes_with_a_library_that_computes_results(monkeypatch):
    """An lm-eval or TRL upgrade changes scores and training: its results are not reused."""
    from importlib import metadata

    import feinschliff.artifacts as artifacts

    artifacts.code_version.cache_clear()
    before = artifacts.code_version()
    real = metadata.version
    monkeypatch.setattr(
        metadata, "version", lambda name: "0.4.99" if name == "lm_eval" else real(name)
    )
    artifacts.code_version.cache_clear()
    try:
        assert artifacts.code_version() != before
    finally:
        artifacts.code_version.cache_clear()


@pytest.mark.parametrize(
    ("field", "value"),
    [("api_key_env", "sk-live-1234567890abcdef"), ("base_url", "localhost:8000")],
)
def test_judge_refuses_a_pasted_key_and_a_url_without_scheme(tmp_path, demo, field, value):
    """A pasted key would reach the resolved-recipe artifact and the Prefect parameters (the
    teacher's field already refused it)."""
    judge = {"base_url": "http://127.0.0.1:8000/v1", "model": "m", "api_key_env": "JUDGE_KEY"}
    demo["evaluate"]["judge"] = {**judge, field: value}
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, demo))
    assert f": evaluate.judge.{field}: " in err.value.lines[0]
    del demo["evaluate"]["judge"][field]
    if field == "api_key_env":
        assert load_recipe(_write(tmp_path, demo)).evaluate.judge.api_key_env is None


@pytest.mark.parametrize(
    ("override", "path", "says"),
    [
        ("gate.rules.0.metric=de_wisen_mc/acc_norm", "gate.rules.0.metric", "not computed"),
        ("gate.rules.4={rule: win_rate}", "gate.rules.4.metric", "needs evaluate.judge"),
        ("evaluate.heldout=false", None, None),  # no rule reads heldout/ metrics: fine
        ("feedback.heldout_fraction=0", "evaluate.tasks", "heldout_fraction is 0"),
        ("train.lora.r=32", "train.lora.r", "exceeds register.max_lora_rank"),
        ("evaluate.tasks=[hellaswag, de_wissen_mc]", None, None),  # upstream: names unknowable
        ("evaluate.tasks=[hellaswag]", "gate.rules.2.metric", "has no eval data to check"),
    ],
)
def test_cross_field_mistakes_are_refused_with_their_yaml_path(override, path, says):
    """Each of these validated before and failed only after training (a typo'd gate metric or
    a win-rate rule without a judge rejected every run; usecase_heldout without held-out data
    failed the evaluation)."""
    demo = ROOT / "recipes" / "demo-de.yaml"
    extra = ["gate.rules.0.metric=hellaswag/acc", "gate.rules.1.metric=hellaswag/acc"]
    overrides = [override, *extra] if "[hellaswag" in override else [override]
    if path is None:
        load_recipe(demo, overrides)
        return
    with pytest.raises(RecipeError) as err:
        load_recipe(demo, overrides)
    assert f"demo-de.yaml: {path}: " in err.value.lines[0] and says in err.value.lines[0]


def test_a_heldout_gate_metric_needs_heldout_scoring(tmp_path, demo):
    demo["evaluate"]["heldout"] = False
    demo["gate"]["rules"].append(
        {"rule": "min", "metric": "heldout/preference_accuracy", "threshold": 0.5}
    )
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, demo))
    line = err.value.lines[0]
    assert ": gate.rules.4.metric: " in line and "needs evaluate.heldout: true" in line


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.replay_fraction=0.2", "demo-de.yaml: train: replay_fraction needs init_from"),
        ("train.lora.target_modules=q_proj", "demo-de.yaml: train.lora.target_modules: Input"),
    ],
)
def test_error_paths_hold_no_union_tags_or_type_labels(override, expected):
    """Paths read `train.sft: Value error, ...` and `...target_modules.literal['all-linear']`
    before: neither is a key the user can find in the YAML."""
    with pytest.raises(RecipeError) as err:
        load_recipe(ROOT / "recipes" / "demo-de.yaml", [override])
    assert all(expected in line for line in err.value.lines), err.value.lines


def test_adhoc_ingest_errors_use_yaml_paths():
    from feinschliff.cli.app import Failure
    from feinschliff.cli.ingest_cmd import _adhoc_spec

    overrides = ["feedback.sources.0.path=null", "feedback.sources.0.pull={bogus: 1}"]
    with pytest.raises(Failure) as err:
        _adhoc_spec(["argilla:/tmp"], None, overrides)
    assert str(err.value).splitlines() == [  # was `...pull.ArgillaPull.dataset`, twice bogus
        "ingest: feedback.sources.0.pull.dataset: Field required",
        "ingest: feedback.sources.0.pull.bogus: unknown key (typo? see `feinschliff schema`)",
    ]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "{kind: langfuse, pull: {page_limit: 5, dataset: y}}",
            ["feedback.sources.0.pull.dataset: unknown key"],
        ),
        ("{kind: argilla, pull: {}}", ["feedback.sources.0.pull.dataset: Field required"]),
        (
            "{kind: argila, pull: {dataset: d}}",
            ["feedback.sources.0.kind: Input should be", "feedback.sources.0.pull: `pull` needs"],
        ),
    ],
)
def test_pull_settings_are_checked_against_the_sources_kind(source, expected):
    """`pull` was a plain union: a Langfuse pull with a typo reported its valid `page_limit`
    as unknown (Argilla's complaint), an empty Argilla pull said "settings do not match"."""
    with pytest.raises(RecipeError) as err:
        load_recipe(ROOT / "recipes" / "demo-de.yaml", [f"feedback.sources.0={source}"])
    lines = [line.split("demo-de.yaml: ", 1)[1] for line in err.value.lines]
    assert len(lines) == len(expected) and all(
        line.startswith(want) for line, want in zip(lines, expected, strict=True)
    ), lines
    ok = load_recipe(
        ROOT / "recipes" / "demo-de.yaml",
        ["feedback.sources.0={kind: argilla, pull: {dataset: d}}"],
    )
    assert ok.feedback.sources[0].pull.model_dump() == {
        "dataset": "d",
        "workspace": None,
        "api_url": None,
        "batch_size": 256,
        "api_key_secret": "ARGILLA_API_KEY",
    }  # nothing else added: the live pull's mirror key (its model_dump without the key's
    # secret name, pull.KEY_NAME_FIELDS) is unchanged


def test_override_errors_say_from_set_not_a_file_line(tmp_path, demo):
    """An error in an overridden value carried the line number of the file's value."""
    demo["train"]["hyperparameters"]["max_steps"] = 0  # the file's own mistake
    own = _write(tmp_path, demo)
    with pytest.raises(RecipeError) as err:
        load_recipe(own, ["schedule.timezone=Europe/Berlin"])
    assert "max_steps" in err.value.lines[0] and "(line " in err.value.lines[0], err.value.lines
    demo = ROOT / "recipes" / "demo-de.yaml"
    with pytest.raises(RecipeError) as err:
        load_recipe(demo, ["train.hyperparameters.max_steps=abc"])
    assert err.value.lines[0].endswith("(from --set)"), err.value.lines
    with pytest.raises(RecipeError) as err:
        load_recipe(demo, ["gate.rules.0={rule: min, metric: foo/x, threshold: 1}"])
    assert "gate.rules.0.metric" in err.value.lines[0]
    assert err.value.lines[0].endswith("(from --set)"), err.value.lines


@pytest.mark.parametrize("index", ["9", "-1"])
def test_an_override_index_outside_the_list_says_so(index):
    with pytest.raises(RecipeError) as err:
        load_recipe(ROOT / "recipes" / "demo-de.yaml", [f"gate.rules.{index}.rule=min"])
    assert f"{index!r} is not an index of a list of 4" in err.value.lines[0], err.value.lines
    assert "4 appends one" in err.value.lines[0]


def test_documented_string_values_that_yaml_1_1_calls_booleans_stay_strings(tmp_path, demo):
    """`pii: {mode: off}` is the documented value; YAML 1.1 read it as False ("got False")."""
    demo["feedback"]["pii"] = {"mode": "off"}
    path = tmp_path / "r.yaml"
    path.write_text(
        yaml.safe_dump(demo, sort_keys=False).replace("mode: 'off'", "mode: off"),
        encoding="utf-8",
    )
    assert "mode: off\n" in path.read_text(encoding="utf-8")
    assert load_recipe(path).feedback.pii.mode == "off"
    assert load_recipe(path, ["feedback.pii.mode=off"]).feedback.pii.mode == "off"
    # booleans still read as booleans, yes/no/on/off included where the field is a boolean
    assert load_recipe(path, ["evaluate.heldout=false"]).evaluate.heldout is False
    assert load_recipe(path, ["evaluate.heldout=no"]).evaluate.heldout is False
    assert load_recipe(path, ["evaluate.heldout=on"]).evaluate.heldout is True


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("{kind: langfuse, path: x, mapping: {answers: [a]}}", "mapping.answers is for Argilla"),
        ("{kind: langfuse, path: x, mapping: {corrections: [c]}}", "mapping.corrections is for"),
        ("{kind: argilla, path: x, mapping: {prompt_template: '{a.b}'}}", "not a plain field name"),
        ("{kind: argilla, path: x, mapping: {prompt_template: '{a'}}", "not a str.format template"),
        ("{kind: argilla, path: x, mapping: {prompt_template: 'no fields'}}", "names no field"),
        ("{kind: argilla, path: x, mapping: {answers: []}}", "at least 1 item"),
    ],
)
def test_a_source_mapping_that_cannot_work_names_its_path(source, says):
    demo = ROOT / "recipes" / "demo-de.yaml"
    with pytest.raises(RecipeError) as exc:
        load_recipe(demo, [f"feedback.sources=[{source}]"])
    assert "feedback.sources.0" in str(exc.value) and says in str(exc.value), str(exc.value)


def test_a_source_mapping_loads_for_each_kind():
    demo = ROOT / "recipes" / "demo-de.yaml"
    sources = (
        "[{kind: argilla, path: x, mapping: {prompt: frage, answers: [antwort],"
        " corrections: [korrektur], prompt_template: '{kontext} {frage}'}},"
        " {kind: langfuse, path: y, mapping: {prompt_template: '{context} {question}'}}]"
    )
    argilla, langfuse = load_recipe(demo, [f"feedback.sources={sources}"]).feedback.sources
    assert argilla.mapping.answers == ["antwort"] and argilla.mapping.corrections == ["korrektur"]
    assert langfuse.mapping.prompt_template == "{context} {question}"
