"""Recipe loading refuses what it used to accept silently: repeated YAML keys, a file that is
not UTF-8, non-integer counts and infinite numbers, an empty LoRA target list; and model paths
in `generate` are relative to the recipe, like every other path in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from feinschliff.recipe_loader import RecipeError, load_recipe
from tests.cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo-de.yaml"


def _demo_with(tmp_path: Path, old: str, new: str, name: str = "recipe.yaml") -> Path:
    text = DEMO.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def _line_of(path: Path, needle: str, nth: int = 1) -> int:
    hits = [i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line]
    return hits[nth - 1]


def test_a_repeated_key_is_refused_with_its_path_and_lines(tmp_path):
    """PyYAML keeps the last of two equal keys: `max_steps: 30` then `max_steps: 5` trained 5
    steps, and a second `train:` section replaced the first one whole."""
    path = _demo_with(tmp_path, "    max_steps: 30\n", "    max_steps: 30\n    max_steps: 5\n")
    with open(path, "a", encoding="utf-8") as f:
        f.write("\ntrain:\n  method: dpo\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    first, second = _line_of(path, "max_steps: 30"), _line_of(path, "max_steps: 5")
    assert err.value.lines == [
        f"{path}: train.hyperparameters.max_steps: duplicate key "
        f"(line {second}; first at line {first})",
        f"{path}: train: duplicate key (line {_line_of(path, 'train:', 2)}; "
        f"first at line {_line_of(path, 'train:')})",
    ]
    code, out = run_cli("validate", str(path))
    assert code == 2 and "duplicate key" in out


def test_a_key_next_to_a_merge_overrides_it_and_is_no_duplicate(tmp_path):
    path = _demo_with(
        tmp_path,
        "    max_steps: 30\n",
        "    <<: {batch_size: 2, max_steps: 7}\n    max_steps: 30\n",
    )
    hp = load_recipe(path).train.hyperparameters
    assert (hp.max_steps, hp.batch_size) == (30, 4)  # explicit keys win over the merged ones
    with pytest.raises(RecipeError, match=r"--set train.lora=.*duplicate key 'r'"):
        load_recipe(DEMO, ["train.lora={r: 2, r: 4}"])


def test_a_recipe_that_is_not_utf8_is_an_argument_error_naming_the_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    text = DEMO.read_text(encoding="utf-8").replace("description: ", "description: Grüße, ", 1)
    raw = text.encode("latin-1")
    path.write_bytes(raw)
    offset = raw.index(b"\xfc")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    line = raw[:offset].count(b"\n") + 1
    assert err.value.lines == [
        f"{path}: cannot read: not UTF-8 (byte 0xfc at offset {offset}, line {line}): "
        "save the recipe as UTF-8"
    ]
    code, out = run_cli("validate", str(path))
    assert code == 2 and "not UTF-8" in out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.hyperparameters.max_steps=true", "not true/false"),
        ("train.lora.r=true", "not true/false"),
        ("train.hyperparameters.batch_size=2.5", "valid integer"),
        ("train.hyperparameters.learning_rate=.inf", "finite number"),
        ("train.hyperparameters.epochs=.inf", "finite number"),
        ("train.hyperparameters.learning_rate=true", "not true/false"),
        ("train.lora.target_modules=[]", "empty list adapts nothing"),
    ],
)
def test_train_numbers_are_what_they_say(override, message):
    key = override.split("=", 1)[0]
    with pytest.raises(RecipeError) as err:
        load_recipe(DEMO, [override])
    assert len(err.value.lines) == 1
    assert f": {key}: " in err.value.lines[0] and message in err.value.lines[0]


def test_a_whole_number_written_as_a_float_is_a_count():
    # sweep tools write 1000.0; only a fraction is refused (above)
    recipe = load_recipe(DEMO, ["train.hyperparameters.max_steps=1000.0", "train.lora.r=16.0"])
    assert (recipe.train.hyperparameters.max_steps, recipe.train.lora.r) == (1000, 16)


@pytest.mark.parametrize("pair", ["on: 1, 'on': 2", "1: 1, 01: 2", "~: 1, null: 2"])
def test_keys_equal_once_loaded_are_duplicates(pair):
    """The check composed the YAML with YAML 1.1 resolvers and compared key texts, while the
    loader (YAML 1.2 booleans) keeps one of `on`/'on', `1`/`01`, `~`/`null`: the last won."""
    with pytest.raises(RecipeError, match="duplicate key"):
        load_recipe(DEMO, [f"train.lora={{{pair}}}"])


def test_a_learning_rate_pyyaml_reads_as_a_string_still_validates():
    # PyYAML (YAML 1.1) reads 1e-4 without a dot as the string "1e-4"
    recipe = load_recipe(DEMO, ["train.hyperparameters.learning_rate=1e-4"])
    assert recipe.train.hyperparameters.learning_rate == 1e-4


_GENERATE = """generate:
  seeds:
    topics: ./topics.txt
  teacher:
    kind: transformers
    model: {teacher}
  preference:
    judge:
      kind: transformers
      model: {judge}
train:"""


@pytest.mark.parametrize(
    ("teacher", "judge", "want_teacher", "want_judge"),
    [
        ("./teacher", "../judge", "{dir}/teacher", "{parent}/judge"),
        ("~/t", "/abs/j", "{home}/t", "/abs/j"),
        ("smollm2-135m-instruct", "org/model", "smollm2-135m-instruct", "org/model"),
    ],
)
def test_local_teacher_and_judge_paths_are_relative_to_the_recipe(
    tmp_path, monkeypatch, teacher, judge, want_teacher, want_judge
):
    """README: relative paths are relative to the recipe; a transformers teacher's folder was
    looked up in the working directory instead. Aliases and hub ids stay as written."""
    recipe_dir = tmp_path / "recipes"
    recipe_dir.mkdir()
    (recipe_dir / "topics.txt").write_text("Rechnung\n")
    path = _demo_with(
        recipe_dir, "train:", _GENERATE.format(teacher=teacher, judge=judge), "r.yaml"
    )
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # not the recipe's folder
    gen = load_recipe(path).generate
    names = {"dir": recipe_dir, "parent": tmp_path, "home": tmp_path / "home"}
    assert gen.teacher.model == want_teacher.format(**names)
    assert gen.preference.judge.model == want_judge.format(**names)


def test_set_on_a_yaml_alias_changes_only_the_place_it_names(tmp_path):
    """PyYAML gives an alias the anchored object itself: --set on one place changed every
    place sharing the anchor."""
    rule = (
        "    - rule: no_regression          # ~2 standard errors at 60 items: noise must not block\n"
        "      metric: de_wissen_mc/acc_norm\n"
        "      baseline: production\n"
        "      tolerance: 0.1\n"
    )
    anchored = rule.replace("- rule:", "- &nr\n      rule:", 1) + "    - *nr\n"
    path = _demo_with(tmp_path, rule, anchored)
    recipe = load_recipe(path, ["register.registry=/tmp/reg", "gate.rules.1.tolerance=0.5"])
    assert recipe.gate.rules[1].tolerance == 0.5
    assert recipe.gate.rules[0].tolerance == 0.1
    assert load_recipe(path, ["register.registry=/tmp/reg"]).gate.rules[1].tolerance == 0.1


def test_a_use_case_name_where_a_recipe_belongs_says_to_give_the_recipe_file(tmp_path):
    """`registry reconcile support-de-demo` (the use case, not its recipe) said only
    `support-de-demo: cannot read: No such file or directory`."""
    code, said = run_cli("registry", "reconcile", "support-de-demo")
    assert code == 2, said
    assert "support-de-demo: no such recipe file (give the recipe's YAML file)" in said, said
    with pytest.raises(RecipeError, match=r"gone\.yaml: no such recipe file$"):
        load_recipe(tmp_path / "gone.yaml")
